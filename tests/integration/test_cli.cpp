// The binary's command line: --version, --help, --check-config, bad configs.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>

#include <unistd.h>

#include "integration/common.hpp"

using namespace relaymeter::testsupport;

namespace {
std::string temp_file(const std::string& text) {
    char path[] = "/tmp/relaymeter-cfg-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    ::close(fd);
    std::ofstream(path) << text;
    return path;
}
} // namespace

TEST_CASE("cli: --version and --help", "[cli]") {
    auto v = run_binary({"--version"});
    CHECK(v.status == 0);
    CHECK(v.output.find("relaymeter ") == 0);
    auto h = run_binary({"--help"});
    CHECK(h.status == 0);
    for (auto flag : {"--config", "--listen", "--upstream", "--check-config", "--version", "--help"})
        CHECK(h.output.find(flag) != std::string::npos);
    auto bad = run_binary({"--no-such-flag"});
    CHECK(bad.status == 2);
}

TEST_CASE("cli: --check-config accepts the shipped config and names file, line and key of errors", "[cli]") {
    auto ok = run_binary({"--check-config", std::string(RELAYMETER_SOURCE_DIR) + "/config/relaymeter.yaml"});
    CHECK(ok.status == 0);
    CHECK(ok.output == "ok\n");

    auto path = temp_file("server:\n  listen: \"127.0.0.1:0\"\npricing:\n  gpt-4.1: { input: -1, output: 2 }\n"
                          "upstream:\n  base_url: \"ftp://x\"\n  bogus: 1\n");
    auto bad = run_binary({"--check-config", path});
    CHECK(bad.status == 2);
    CHECK(bad.output.find(path + ":4:") != std::string::npos);
    CHECK(bad.output.find("pricing.gpt-4.1.input") != std::string::npos);
    CHECK(bad.output.find(path + ":6:") != std::string::npos);
    CHECK(bad.output.find("upstream.bogus") != std::string::npos);
    std::remove(path.c_str());
}

TEST_CASE("cli: a bad config or unset variable stops the daemon before it starts", "[cli]") {
    auto path = temp_file("server:\n  listen: \"127.0.0.1:0\"\nupstream:\n  api_key: \"${RELAYMETER_TEST_UNSET_VAR}\"\n");
    auto r = run_binary({"--config", path});
    CHECK(r.status == 2);
    CHECK(r.output.find("RELAYMETER_TEST_UNSET_VAR") != std::string::npos);
    CHECK(r.output.find(path + ":4:") != std::string::npos);
    CHECK(r.output.find("listening") == std::string::npos);
    auto missing = run_binary({"--config", "/nonexistent/relaymeter.yaml"});
    CHECK(missing.status == 2);
    CHECK(missing.output.find("/nonexistent/relaymeter.yaml") != std::string::npos);
    auto good = temp_file("server:\n  listen: \"127.0.0.1:0\"\n");
    auto bad_flag = run_binary({"--config", good, "--listen", "nonsense"});
    CHECK(bad_flag.status == 2);
    CHECK(bad_flag.output.find("--listen") != std::string::npos);
    std::remove(path.c_str());
    std::remove(good.c_str());
}
