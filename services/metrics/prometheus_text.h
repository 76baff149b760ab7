// Prometheus text exposition format 0.0.4 (what `/metrics` serves and Prometheus scrapes):
// `# HELP` / `# TYPE` per family, one line per sample, histograms as cumulative `_bucket{le=...}`
// series ending in `le="+Inf"`, then `_sum` and `_count`. Families without series are omitted.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "services/metrics/metrics_registry.h"

namespace kvblock::metrics {

// The Content-Type of the format.
inline constexpr char kPrometheusTextContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Renders snapshots (in the given order; MetricsRegistry::Collect sorts them by name).
std::string RenderPrometheusText(const std::vector<FamilySnapshot>& families);
// Collects `registry` and renders it. Thread-safe.
std::string RenderPrometheusText(const MetricsRegistry& registry);

// Escaping rules of the format: label values escape backslash, double quote and newline; HELP
// text escapes backslash and newline.
std::string EscapeLabelValue(std::string_view value);
std::string EscapeHelp(std::string_view help);
// A sample value: integers without a decimal point, other finite values in the shortest form
// that reads back exactly, and `+Inf`, `-Inf`, `NaN`.
std::string FormatSampleValue(double value);

}  // namespace kvblock::metrics
