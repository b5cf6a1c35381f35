#include "relaymeter/metrics/histogram.hpp"

#include <algorithm>
#include <cmath>

namespace relaymeter::metrics {

namespace {

// Function-local statics: safe to use from other translation units' static initialisers.
double log_gamma() {
    static const double value = std::log(LatencyHistogram::kGamma);
    return value;
}

std::int32_t max_index() {
    static const auto value = static_cast<std::int32_t>(
        std::ceil(std::log(LatencyHistogram::kMaxValue / LatencyHistogram::kMinValue) / log_gamma()));
    return value;
}

double coarse_log_gamma() {
    static const double value = std::log(LatencyHistogram::kCoarseGamma);
    return value;
}

std::int32_t coarse_max_index() {
    static const auto value = static_cast<std::int32_t>(
        std::ceil(std::log(LatencyHistogram::kMaxValue / LatencyHistogram::kMinValue) / coarse_log_gamma()));
    return value;
}

// Representative value of a log bucket: the point whose relative distance to
// both bucket ends is (gamma - 1) / (gamma + 1).
double bucket_value(std::int32_t index) {
    return LatencyHistogram::kMinValue * 2.0 * std::pow(LatencyHistogram::kGamma, index) /
           (LatencyHistogram::kGamma + 1.0);
}

// 1-based nearest rank of quantile q among n values: ceil(q * n), at least 1.
// The epsilon keeps 0.07 * 100 (= 7.000000000000001) at rank 7.
std::uint64_t nearest_rank(double q, std::uint64_t n) {
    const double r = std::ceil(q * static_cast<double>(n) - 1e-9);
    if (r < 1) return 1;
    if (r >= static_cast<double>(n)) return n;
    return static_cast<std::uint64_t>(r);
}

} // namespace

std::int32_t LatencyHistogram::sketch_index(double seconds) {
    if (!(seconds > kMinValue)) return 0; // also NaN
    if (seconds >= kMaxValue) return max_index();
    const auto i = static_cast<std::int32_t>(std::ceil(std::log(seconds / kMinValue) / log_gamma()));
    return std::clamp<std::int32_t>(i, 0, max_index());
}

std::size_t LatencyHistogram::sketch_capacity() { return static_cast<std::size_t>(max_index()) + 1; }

std::int32_t LatencyHistogram::index_of(double seconds) const {
    if (resolution_ == Resolution::fine) return sketch_index(seconds);
    if (!(seconds > kMinValue)) return 0;
    if (seconds >= kMaxValue) return coarse_max_index();
    const auto i = static_cast<std::int32_t>(std::ceil(std::log(seconds / kMinValue) / coarse_log_gamma()));
    return std::clamp<std::int32_t>(i, 0, coarse_max_index());
}

double LatencyHistogram::value_of(std::int32_t index) const {
    if (resolution_ == Resolution::fine) return bucket_value(index);
    return kMinValue * 2.0 * std::pow(kCoarseGamma, index) / (kCoarseGamma + 1.0);
}

void LatencyHistogram::reserve_sketch(std::size_t needed) {
    if (needed <= sketch_.capacity()) return;
    const std::size_t doubled = std::max(needed, 2 * sketch_.capacity());
    sketch_.reserve(resolution_ == Resolution::coarse ? std::min(doubled, kCoarseMaxBuckets) : doubled);
}

void LatencyHistogram::add_to_sketch(std::int32_t index, std::uint64_t n) {
    const bool coarse = resolution_ == Resolution::coarse;
    const auto cap = static_cast<std::int32_t>(kCoarseMaxBuckets);
    if (sketch_.empty()) {
        offset_ = index;
        reserve_sketch(1);
        sketch_.assign(1, 0);
    } else {
        const std::int32_t top = offset_ + static_cast<std::int32_t>(sketch_.size()) - 1;
        if (index < offset_) {
            // Coarse: a value below the kept span joins its lowest bucket.
            if (coarse) index = std::max(index, top - cap + 1);
            if (index < offset_) {
                reserve_sketch(sketch_.size() + static_cast<std::size_t>(offset_ - index));
                sketch_.insert(sketch_.begin(), static_cast<std::size_t>(offset_ - index), 0);
                offset_ = index;
            }
        } else if (index > top) {
            if (coarse && index - offset_ + 1 > cap) {
                // Fold the buckets below the new lowest kept index into it.
                const std::int32_t low = index - cap + 1;
                const auto drop = static_cast<std::size_t>(std::min<std::int64_t>(low - offset_, static_cast<std::int64_t>(sketch_.size())));
                std::uint64_t folded = 0;
                for (std::size_t k = 0; k < drop; ++k) folded += sketch_[k];
                sketch_.erase(sketch_.begin(), sketch_.begin() + static_cast<std::ptrdiff_t>(drop));
                if (sketch_.empty()) sketch_.push_back(0);
                offset_ = low;
                sketch_.front() += folded;
            }
            reserve_sketch(static_cast<std::size_t>(index - offset_) + 1);
            sketch_.resize(static_cast<std::size_t>(index - offset_) + 1, 0);
        }
    }
    sketch_[static_cast<std::size_t>(index - offset_)] += n;
}

void LatencyHistogram::observe(double seconds) {
    if (!(seconds >= 0)) seconds = 0; // negative or NaN
    if (std::isinf(seconds)) seconds = kMaxValue;

    if (count_ == 0) {
        min_ = max_ = seconds;
    } else {
        min_ = std::min(min_, seconds);
        max_ = std::max(max_, seconds);
    }
    ++count_;
    sum_ += seconds;

    const auto it = std::lower_bound(kLatencyBuckets.begin(), kLatencyBuckets.end(), seconds);
    ++buckets_[static_cast<std::size_t>(it - kLatencyBuckets.begin())];

    add_to_sketch(index_of(seconds), 1);
}

void LatencyHistogram::merge(const LatencyHistogram& other) {
    if (other.count_ == 0) return;
    if (count_ == 0 && resolution_ == other.resolution_) {
        *this = other;
        return;
    }
    if (count_ == 0) {
        min_ = other.min_;
        max_ = other.max_;
    } else {
        min_ = std::min(min_, other.min_);
        max_ = std::max(max_, other.max_);
    }
    count_ += other.count_;
    sum_ += other.sum_;
    for (std::size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += other.buckets_[i];

    if (resolution_ != other.resolution_ || resolution_ == Resolution::coarse) {
        // Bucket by bucket (coarse: keeps the span bounded). With different
        // resolutions each of other's buckets lands where its value falls here.
        const bool same = resolution_ == other.resolution_;
        for (std::size_t k = 0; k < other.sketch_.size(); ++k) {
            if (other.sketch_[k] == 0) continue;
            const std::int32_t i = other.offset_ + static_cast<std::int32_t>(k);
            add_to_sketch(same ? i : index_of(other.value_of(i)), other.sketch_[k]);
        }
        return;
    }

    const std::int32_t lo = std::min(offset_, other.offset_);
    const std::int32_t hi = std::max(offset_ + static_cast<std::int32_t>(sketch_.size()),
                                     other.offset_ + static_cast<std::int32_t>(other.sketch_.size()));
    if (lo < offset_) {
        sketch_.insert(sketch_.begin(), static_cast<std::size_t>(offset_ - lo), 0);
        offset_ = lo;
    }
    if (static_cast<std::int32_t>(sketch_.size()) < hi - lo) sketch_.resize(static_cast<std::size_t>(hi - lo), 0);
    const auto shift = static_cast<std::size_t>(other.offset_ - offset_);
    for (std::size_t k = 0; k < other.sketch_.size(); ++k) sketch_[shift + k] += other.sketch_[k];
}

double LatencyHistogram::quantile(double q) const {
    if (count_ == 0) return 0;
    if (!(q >= 0)) q = 0;
    if (q > 1) q = 1;
    const std::uint64_t rank = nearest_rank(q, count_);
    if (rank == 1) return min_;
    if (rank == count_) return max_;
    std::uint64_t seen = 0;
    for (std::size_t k = 0; k < sketch_.size(); ++k) {
        seen += sketch_[k];
        if (seen >= rank) {
            // Exact extremes tighten the estimate when the rank falls in their bucket.
            return std::clamp(value_of(offset_ + static_cast<std::int32_t>(k)), min_, max_);
        }
    }
    return max_;
}

} // namespace relaymeter::metrics
