// Headless Chromium (Debian's `chromium`) loads /dashboard from a running process: after its
// JavaScript ran (virtual time), the DOM shows live numbers from that server, and a screenshot
// is saved as a test artifact: <build>/test-artifacts/dashboard.png.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <regex>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/services/metrics/external_tools.h"

namespace kvblock::metrics::testing {

const std::vector<std::string> kRequiredTools = {"chromium"};

namespace {

using ::testing::HasSubstr;

constexpr int kRate = 1500;

std::vector<std::string> ChromiumArgs(const std::string& profile_dir) {
  return {*FindTool("chromium"), "--headless", "--disable-gpu",
          "--no-sandbox",  // runs as root in CI
          "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
          "--user-data-dir=" + profile_dir, "--window-size=1440,1080",
          // JS runs on virtual time: ~4 polls of /api/stats (fetches pause the clock).
          "--virtual-time-budget=4500"};
}

// The attributes of the element with `id` in a dumped DOM (empty map when absent).
std::map<std::string, std::string> Attributes(const std::string& dom, const std::string& id) {
  std::map<std::string, std::string> out;
  std::smatch tag;
  if (!std::regex_search(dom, tag, std::regex("<[a-z]+ [^>]*id=\"" + id + "\"[^>]*>"))) return out;
  const std::string text = tag.str();
  std::regex attr("([a-z-]+)=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), attr); it != std::sregex_iterator();
       ++it) {
    out[(*it)[1]] = (*it)[2];
  }
  return out;
}

// The text content of the element with `id` (no nested tags expected).
std::string Text(const std::string& dom, const std::string& id) {
  std::smatch m;
  if (!std::regex_search(dom, m, std::regex("id=\"" + id + "\"[^>]*>([^<]*)<"))) return "";
  return m[1];
}

double NumberAttr(const std::string& dom, const std::string& id, const std::string& name) {
  auto attrs = Attributes(dom, id);
  auto it = attrs.find(name);
  if (it == attrs.end() || it->second.empty()) return NAN;
  return std::stod(it->second);
}

double RequestsTotal(int port) {
  absl::StatusOr<HttpResponse> r = HttpGet(port, "/api/stats");
  if (!r.ok()) return NAN;
  return nlohmann::json::parse(r->body)["current"]["requests_total"].get<double>();
}

class DashboardChromiumTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(std::random_device{}());
    title_ = absl::StrCat("node-", rng() % 100000);
    absl::StatusOr<DemoServer> demo =
        StartDemoServer({"--rate", absl::StrCat(kRate), "--title", title_});
    ASSERT_TRUE(demo.ok()) << demo.status();
    demo_.emplace(std::move(*demo));
    // A few seconds of history so the charts have lines.
    absl::SleepFor(absl::Seconds(3));
  }
  std::string Url() const { return absl::StrCat("http://127.0.0.1:", demo_->port, "/dashboard"); }

  std::string title_;
  std::optional<DemoServer> demo_;
};

TEST_F(DashboardChromiumTest, DomShowsLiveNumbers) {
  const double before = RequestsTotal(demo_->port);
  std::vector<std::string> argv = ChromiumArgs(MakeTempDir("chromium-profile"));
  argv.push_back("--dump-dom");
  argv.push_back(Url());
  absl::StatusOr<RunResult> run = RunTool(argv, absl::Seconds(120));
  ASSERT_TRUE(run.ok()) << run.status();
  const double after = RequestsTotal(demo_->port);
  ASSERT_EQ(run->exit_code, 0) << run->output;
  // stdout and stderr share the log: the DOM starts at <html.
  const size_t start = run->output.find("<html");
  ASSERT_NE(start, std::string::npos) << run->output;
  const std::string dom = run->output.substr(start);

  // The page polled the server more than once and says so.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(dom, m, std::regex("<body data-updates=\"([0-9]+)\"")));
  EXPECT_GE(std::stoi(m[1]), 2) << "polls of /api/stats";
  EXPECT_EQ(Text(dom, "status-text"), "live");
  // Numbers from this server: its title, its request counter, plausible rates.
  EXPECT_EQ(Text(dom, "title"), title_);
  const double total = NumberAttr(dom, "v-rps", "data-total");
  EXPECT_GE(total, before);
  EXPECT_LE(total, after);
  EXPECT_GT(total, 0);
  const double rps = NumberAttr(dom, "v-rps", "data-value");
  EXPECT_GT(rps, kRate * 0.7);
  EXPECT_LT(rps, kRate * 1.3);
  EXPECT_NEAR(NumberAttr(dom, "v-hit-rate", "data-value"), 0.8, 0.08);
  const double p50 = NumberAttr(dom, "v-p50", "data-value");
  const double p99 = NumberAttr(dom, "v-p99", "data-value");
  EXPECT_GT(p50, 0.0001);
  EXPECT_LT(p50, 0.01);
  EXPECT_GT(p99, p50);
  EXPECT_GT(NumberAttr(dom, "v-bps", "data-value"), 1 << 20);
  EXPECT_GT(NumberAttr(dom, "v-rss", "data-value"), 1 << 20);
  EXPECT_GT(NumberAttr(dom, "uptime", "data-value"), 3);
  // What a human reads: formatted values, not placeholders.
  for (const char* id : {"v-hit-rate", "v-rps", "v-bps", "v-p50", "v-p99", "v-rss"}) {
    EXPECT_NE(Text(dom, id), "—") << id;
    EXPECT_FALSE(Text(dom, id).empty()) << id;
  }
  EXPECT_THAT(Text(dom, "v-hit-rate"), ::testing::EndsWith("%"));
  EXPECT_THAT(Text(dom, "v-p50"), ::testing::AnyOf(HasSubstr("ms"), HasSubstr("µs")));
  // Chart legends carry latest values; the table lists every series.
  EXPECT_THAT(dom, HasSubstr("p99 <b>"));
  EXPECT_THAT(dom, HasSubstr(">kvblock_requests_total</td>"));
  EXPECT_THAT(dom, HasSubstr(">kvblock_tier_bytes</td>"));
  std::printf("measured: dashboard showed %s req/s, hit rate %s, p50 %s, p99 %s, RSS %s\n",
              Text(dom, "v-rps").c_str(), Text(dom, "v-hit-rate").c_str(),
              Text(dom, "v-p50").c_str(), Text(dom, "v-p99").c_str(), Text(dom, "v-rss").c_str());
}

TEST_F(DashboardChromiumTest, ScreenshotIsSaved) {
  const std::string dir = std::string(KVBLOCK_BINARY_DIR) + "/test-artifacts";
  std::filesystem::create_directories(dir);
  const std::string png = dir + "/dashboard.png";
  std::filesystem::remove(png);
  std::vector<std::string> argv = ChromiumArgs(MakeTempDir("chromium-profile"));
  argv.push_back("--screenshot=" + png);
  argv.push_back(Url());
  absl::StatusOr<RunResult> run = RunTool(argv, absl::Seconds(120));
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->exit_code, 0) << run->output;
  const std::string bytes = ReadFileOrEmpty(png);
  ASSERT_GT(bytes.size(), 24u) << "no screenshot at " << png << "\n" << run->output;
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  auto be32 = [&](size_t at) {
    return (static_cast<uint32_t>(static_cast<uint8_t>(bytes[at])) << 24) |
           (static_cast<uint32_t>(static_cast<uint8_t>(bytes[at + 1])) << 16) |
           (static_cast<uint32_t>(static_cast<uint8_t>(bytes[at + 2])) << 8) |
           static_cast<uint32_t>(static_cast<uint8_t>(bytes[at + 3]));
  };
  EXPECT_EQ(be32(16), 1440u);  // IHDR width
  EXPECT_EQ(be32(20), 1080u);  // IHDR height
  // A blank or unstyled page compresses to a few KB; charts, text and tiles do not.
  EXPECT_GT(bytes.size(), 40u * 1024) << "suspiciously small screenshot";
  std::printf("screenshot: %s (%zu bytes)\n", png.c_str(), bytes.size());
}

}  // namespace
}  // namespace kvblock::metrics::testing
