#include "core/metrics.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace paybridge::metrics {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<std::uint64_t>[bounds_.size() + 1])
{
    for (std::size_t i = 0; i <= bounds_.size(); ++i) {
        buckets_[i].store(0);
    }
}

void Histogram::observe(double seconds) noexcept
{
    std::size_t i = 0;
    while (i < bounds_.size() && seconds > bounds_[i]) {
        ++i;
    }
    buckets_[i].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
    sum_micros_.fetch_add(static_cast<std::uint64_t>(std::llround(seconds * 1e6)), std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const
{
    Snapshot s;
    std::uint64_t running = 0;
    for (std::size_t i = 0; i <= bounds_.size(); ++i) {
        running += buckets_[i].load(std::memory_order_relaxed);
        s.cumulative.push_back(running);
    }
    s.count = running;
    s.sum = static_cast<double>(sum_micros_.load(std::memory_order_relaxed)) / 1e6;
    return s;
}

Family<Counter>& Registry::counter(std::string name, std::string help)
{
    std::lock_guard lock(mutex_);
    for (auto& f : counters_) {
        if (f->name() == name) {
            return *f;
        }
    }
    counters_.push_back(std::make_unique<Family<Counter>>(std::move(name), std::move(help),
                                                          [] { return std::make_unique<Counter>(); }));
    return *counters_.back();
}

Family<Gauge>& Registry::gauge(std::string name, std::string help)
{
    std::lock_guard lock(mutex_);
    for (auto& f : gauges_) {
        if (f->name() == name) {
            return *f;
        }
    }
    gauges_.push_back(std::make_unique<Family<Gauge>>(std::move(name), std::move(help),
                                                      [] { return std::make_unique<Gauge>(); }));
    return *gauges_.back();
}

Family<Histogram>& Registry::histogram(std::string name, std::string help, std::vector<double> bounds)
{
    std::lock_guard lock(mutex_);
    for (auto& f : histograms_) {
        if (f->name() == name) {
            return *f;
        }
    }
    histograms_.push_back(std::make_unique<Family<Histogram>>(
        std::move(name), std::move(help), [bounds] { return std::make_unique<Histogram>(bounds); }));
    return *histograms_.back();
}

void Registry::callback_gauge(std::string name, std::string help, std::function<double()> fn)
{
    add_callback(std::move(name), std::move(help), std::move(fn), false);
}

void Registry::callback_counter(std::string name, std::string help, std::function<double()> fn)
{
    add_callback(std::move(name), std::move(help), std::move(fn), true);
}

void Registry::add_callback(std::string name, std::string help, std::function<double()> fn, bool counter)
{
    std::lock_guard lock(mutex_);
    for (auto& c : callbacks_) {
        if (c.name == name) {
            c.fn = std::move(fn);
            return;
        }
    }
    callbacks_.push_back({std::move(name), std::move(help), std::move(fn), counter});
}

namespace {

std::string escape_label(const std::string& v)
{
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

std::string label_text(const Labels& labels, const std::string& extra_key = {}, const std::string& extra_value = {})
{
    std::string out;
    for (const auto& [k, v] : labels) {
        out += out.empty() ? "{" : ",";
        out += k + "=\"" + escape_label(v) + "\"";
    }
    if (!extra_key.empty()) {
        out += out.empty() ? "{" : ",";
        out += extra_key + "=\"" + extra_value + "\"";
    }
    if (!out.empty()) {
        out += '}';
    }
    return out;
}

std::string number(double v)
{
    if (std::isinf(v)) {
        return v > 0 ? "+Inf" : "-Inf";
    }
    // The shortest text that reads back as v: bucket bounds print as written (le="0.0005", not
    // le="0.00050000000000000001"), so a selector on the bound matches; whole numbers as integers.
    if (std::abs(v) < 1e15 && v == std::trunc(v)) {
        return std::to_string(static_cast<std::int64_t>(v));
    }
    char buf[64];
    const std::to_chars_result r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
    return std::string(buf, r.ptr);
}

void header(std::string& out, const std::string& name, const std::string& help, const char* type)
{
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

std::string Registry::render() const
{
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& f : counters_) {
        header(out, f->name(), f->help(), "counter");
        f->each([&](const Labels& l, const Counter& c) {
            out += f->name() + label_text(l) + " " + std::to_string(c.value()) + "\n";
        });
    }
    for (const auto& f : gauges_) {
        header(out, f->name(), f->help(), "gauge");
        f->each([&](const Labels& l, const Gauge& g) {
            out += f->name() + label_text(l) + " " + std::to_string(g.value()) + "\n";
        });
    }
    for (const auto& c : callbacks_) {
        header(out, c.name, c.help, c.counter ? "counter" : "gauge");
        out += c.name + " " + number(c.fn()) + "\n";
    }
    for (const auto& f : histograms_) {
        header(out, f->name(), f->help(), "histogram");
        f->each([&](const Labels& l, const Histogram& h) {
            const auto s = h.snapshot();
            for (std::size_t i = 0; i < h.bounds().size(); ++i) {
                out += f->name() + "_bucket" + label_text(l, "le", number(h.bounds()[i])) + " " +
                       std::to_string(s.cumulative[i]) + "\n";
            }
            out += f->name() + "_bucket" + label_text(l, "le", "+Inf") + " " + std::to_string(s.count) + "\n";
            out += f->name() + "_sum" + label_text(l) + " " + number(s.sum) + "\n";
            out += f->name() + "_count" + label_text(l) + " " + std::to_string(s.count) + "\n";
        });
    }
    return out;
}

Registry& registry()
{
    static Registry r;
    return r;
}

}  // namespace paybridge::metrics
