#pragma once

// A small Prometheus registry: counters and gauges with label sets, histograms with fixed
// buckets, rendered in the text exposition format (version 0.0.4). Thread-safe; hot paths keep
// the pointer a family hands out, so an increment is one relaxed atomic add.

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace paybridge::metrics {

class Counter {
public:
    void inc(std::uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
    std::uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::uint64_t> value_{0};
};

class Gauge {
public:
    void set(std::int64_t v) noexcept { value_.store(v, std::memory_order_relaxed); }
    void add(std::int64_t v) noexcept { value_.fetch_add(v, std::memory_order_relaxed); }
    std::int64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
    std::atomic<std::int64_t> value_{0};
};

/// Latency histogram in seconds with fixed buckets.
class Histogram {
public:
    explicit Histogram(std::vector<double> bounds);
    void observe(double seconds) noexcept;
    struct Snapshot {
        std::vector<std::uint64_t> cumulative;  // per bound, then +Inf
        std::uint64_t count{0};
        double sum{0};
    };
    Snapshot snapshot() const;
    const std::vector<double>& bounds() const noexcept { return bounds_; }

private:
    std::vector<double> bounds_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;
    std::atomic<std::uint64_t> count_{0};
    std::atomic<std::uint64_t> sum_micros_{0};
};

using Labels = std::vector<std::pair<std::string, std::string>>;

/// A metric family: one name, one type, many label sets.
template <class M>
class Family {
public:
    Family(std::string name, std::string help, std::function<std::unique_ptr<M>()> make)
        : name_(std::move(name)), help_(std::move(help)), make_(std::move(make)) {}

    /// The child for these labels, created on first use. The pointer stays valid forever.
    M& with(const Labels& labels);

    /// The same for label `names` with `values` (in that order), looked up first in a per-thread
    /// cache: on the request path, once warm, no lock is taken and nothing is allocated. The
    /// family must live as long as the threads using it (the process registry's families do).
    template <std::size_t N>
    M& cached(const std::array<std::string_view, N>& names, const std::array<std::string_view, N>& values);

    const std::string& name() const noexcept { return name_; }
    const std::string& help() const noexcept { return help_; }
    template <class F>
    void each(F&& f) const
    {
        std::lock_guard lock(mutex_);
        for (const auto& [labels, m] : children_) {
            f(labels, *m);
        }
    }

private:
    std::string name_;
    std::string help_;
    std::function<std::unique_ptr<M>()> make_;
    mutable std::mutex mutex_;
    std::map<Labels, std::unique_ptr<M>> children_;
};

template <class M>
M& Family<M>::with(const Labels& labels)
{
    std::lock_guard lock(mutex_);
    auto it = children_.find(labels);
    if (it == children_.end()) {
        it = children_.emplace(labels, make_()).first;
    }
    return *it->second;
}

template <class M>
template <std::size_t N>
M& Family<M>::cached(const std::array<std::string_view, N>& names, const std::array<std::string_view, N>& values)
{
    // Entries key on the family and the values joined by '\0' (label values never contain NUL in
    // practice; a collision would only merge two children's counts). Label sets are few, so a
    // linear scan of a short vector beats hashing.
    struct Entry {
        const void* family;
        std::string key;
        M* child;
    };
    thread_local std::vector<Entry> cache;
    std::array<char, 256> buf;
    std::size_t len = 0;
    bool fits = true;
    for (std::size_t i = 0; i < N; ++i) {
        if (len + values[i].size() + 1 > buf.size()) {
            fits = false;
            break;
        }
        values[i].copy(buf.data() + len, values[i].size());
        len += values[i].size();
        buf[len++] = '\0';
    }
    const std::string_view key(buf.data(), len);
    if (fits) {
        for (const Entry& e : cache) {
            if (e.family == this && e.key == key) {
                return *e.child;
            }
        }
    }
    Labels labels;
    labels.reserve(N);
    for (std::size_t i = 0; i < N; ++i) {
        labels.emplace_back(std::string(names[i]), std::string(values[i]));
    }
    M& child = with(labels);
    if (fits && cache.size() < 256) {
        cache.push_back(Entry{this, std::string(key), &child});
    }
    return child;
}

/// The process registry.
class Registry {
public:
    Family<Counter>& counter(std::string name, std::string help);
    Family<Gauge>& gauge(std::string name, std::string help);
    Family<Histogram>& histogram(std::string name, std::string help, std::vector<double> bounds);
    /// A gauge computed when scraped (backlog sizes, uptime).
    void callback_gauge(std::string name, std::string help, std::function<double()> fn);
    /// A counter whose value lives elsewhere (e.g. per-connection atomics), read when scraped.
    void callback_counter(std::string name, std::string help, std::function<double()> fn);

    /// Text exposition format.
    std::string render() const;

private:
    mutable std::mutex mutex_;
    std::vector<std::unique_ptr<Family<Counter>>> counters_;
    std::vector<std::unique_ptr<Family<Gauge>>> gauges_;
    std::vector<std::unique_ptr<Family<Histogram>>> histograms_;
    struct Callback {
        std::string name, help;
        std::function<double()> fn;
        bool counter{false};
    };
    void add_callback(std::string name, std::string help, std::function<double()> fn, bool counter);
    std::vector<Callback> callbacks_;
};

Registry& registry();

}  // namespace paybridge::metrics
