// Latency histogram: Prometheus buckets for exposition plus a log-bucketed
// sketch (relative error <= 1%) for percentiles, in fixed memory. The coarse
// resolution (relative error <= 2%, at most kCoarseMaxBuckets log buckets) is
// used for the per-minute aggregates behind windowed figures.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace relaymeter::metrics {

// Upper bounds (seconds) of the exported histogram buckets; +Inf is implicit.
// 2 s is one because it is the default p95 threshold (alerts.latency_p95_ms,
// docker/prometheus/alerts.yml): with 1 and 2.5 as neighbours, Prometheus's
// histogram_quantile put a p95 of 1.6 s at 2.4 s and its rule fired where the
// daemon's did not; 1.5 keeps the 1-2 s range that models often answer in
// readable.
inline constexpr std::array<double, 18> kLatencyBuckets = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 5, 10, 20, 30, 60, 120, 300};

class LatencyHistogram {
public:
    enum class Resolution : std::uint8_t { fine, coarse };

    LatencyHistogram() = default;
    explicit LatencyHistogram(Resolution resolution) : resolution_(resolution) {}

    void observe(double seconds);
    void merge(const LatencyHistogram& other);

    std::uint64_t count() const { return count_; }
    double sum() const { return sum_; }
    // Non-cumulative counts per kLatencyBuckets entry, then the +Inf overflow.
    const std::array<std::uint64_t, kLatencyBuckets.size() + 1>& buckets() const { return buckets_; }
    // q in [0,1]; 0 when empty. Within 1% relative error of the exact
    // nearest-rank value over every observation (values >= 1 microsecond).
    double quantile(double q) const;

    // Sketch parameters. Index i covers (kMinValue * kGamma^(i-1), kMinValue * kGamma^i]
    // and reports 2 * kMinValue * kGamma^i / (kGamma + 1): relative error at most
    // (kGamma - 1) / (kGamma + 1) ~ 0.0099. Values are clamped to [kMinValue, kMaxValue].
    static constexpr double kGamma = 1.02;
    static constexpr double kMinValue = 1e-6;   // 1 microsecond
    static constexpr double kMaxValue = 3600.0; // 1 hour
    static std::int32_t sketch_index(double seconds);
    static std::size_t sketch_capacity(); // maximum number of log buckets kept (~1.1k)

    // Coarse resolution: gamma 1.04, relative error (kCoarseGamma - 1) / (kCoarseGamma + 1)
    // ~ 0.0196. At most kCoarseMaxBuckets log buckets are kept (2 KiB): when the
    // observations span more (a factor of 1.04^256 ~ 23000 between the smallest
    // and the largest), the lowest buckets are folded into one, so only the
    // lowest quantiles lose accuracy (the exact minimum is still kept).
    static constexpr double kCoarseGamma = 1.04;
    static constexpr std::size_t kCoarseMaxBuckets = 256;

    Resolution resolution() const { return resolution_; }
    // Bytes held, this object included (for the window memory bound).
    std::size_t memory_bytes() const { return sizeof(*this) + sketch_.capacity() * sizeof(std::uint64_t); }

private:
    std::int32_t index_of(double seconds) const;
    double value_of(std::int32_t index) const;
    void add_to_sketch(std::int32_t index, std::uint64_t n);
    void reserve_sketch(std::size_t needed); // coarse: capacity never above kCoarseMaxBuckets

    Resolution resolution_ = Resolution::fine;
    std::uint64_t count_ = 0;
    double sum_ = 0;
    std::array<std::uint64_t, kLatencyBuckets.size() + 1> buckets_{};
    // Log buckets: sketch_[k] counts values of index offset_ + k. Grown on demand
    // to at most sketch_capacity() entries (~9 KiB), whatever the request count.
    std::vector<std::uint64_t> sketch_;
    std::int32_t offset_ = 0;
    double min_ = 0, max_ = 0; // exact extremes of the observations (valid when count_ > 0)
};

} // namespace relaymeter::metrics
