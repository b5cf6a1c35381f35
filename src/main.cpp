#include "relaymeter/server/daemon.hpp"

int main(int argc, char** argv) { return relaymeter::run_daemon(argc, argv); }
