#include "services/metrics/prometheus_text.h"

#include <charconv>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace kvblock::metrics {
namespace {

// Appends `{a="x",b="y"}` (with an optional extra `le` label); nothing when there are no labels.
void AppendLabels(std::string& out, const std::vector<std::string>& names,
                  const std::vector<std::string>& values, const std::string* le) {
  if (names.empty() && le == nullptr) return;
  out += '{';
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ',';
    out += names[i];
    out += "=\"";
    out += EscapeLabelValue(values[i]);
    out += '"';
  }
  if (le != nullptr) {
    if (!names.empty()) out += ',';
    out += "le=\"";
    out += *le;
    out += '"';
  }
  out += '}';
}

void AppendSample(std::string& out, std::string_view name, const std::vector<std::string>& names,
                  const std::vector<std::string>& values, const std::string* le, double value) {
  out.append(name.data(), name.size());
  AppendLabels(out, names, values, le);
  out += ' ';
  out += FormatSampleValue(value);
  out += '\n';
}

}  // namespace

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string FormatSampleValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Integral values below 2^53 are exact as int64: print them the way counters read.
  if (value == std::trunc(value) && std::fabs(value) < 9007199254740992.0) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);  // shortest round-trip form
  return std::string(buf, end);
}

std::string RenderPrometheusText(const std::vector<FamilySnapshot>& families) {
  std::string out;
  for (const FamilySnapshot& f : families) {
    if (f.series.empty()) continue;
    const std::string& name = f.info.name;
    absl::StrAppend(&out, "# HELP ", name, " ", EscapeHelp(f.info.help), "\n");
    absl::StrAppend(&out, "# TYPE ", name, " ", std::string(MetricTypeName(f.type)), "\n");
    const std::vector<std::string>& names = f.info.label_names;
    if (f.type != MetricType::kHistogram) {
      for (const SeriesSnapshot& s : f.series) {
        AppendSample(out, name, names, s.label_values, nullptr, s.value);
      }
      continue;
    }
    const std::string bucket_name = name + "_bucket";
    std::vector<std::string> les;
    les.reserve(f.upper_bounds.size() + 1);
    for (double b : f.upper_bounds) les.push_back(FormatSampleValue(b));
    les.push_back("+Inf");
    for (const SeriesSnapshot& s : f.series) {
      uint64_t cumulative = 0;
      for (size_t i = 0; i < les.size() && i < s.bucket_counts.size(); ++i) {
        cumulative += s.bucket_counts[i];
        AppendSample(out, bucket_name, names, s.label_values, &les[i],
                     static_cast<double>(cumulative));
      }
      AppendSample(out, name + "_sum", names, s.label_values, nullptr, s.sum);
      AppendSample(out, name + "_count", names, s.label_values, nullptr,
                   static_cast<double>(s.count));
    }
  }
  return out;
}

std::string RenderPrometheusText(const MetricsRegistry& registry) {
  return RenderPrometheusText(registry.Collect());
}

}  // namespace kvblock::metrics
