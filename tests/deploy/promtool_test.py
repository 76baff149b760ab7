"""deploy_promtool: Debian's promtool accepts deploy/monitoring: `promtool check config` on
prometheus.yml (which loads the rule file), `promtool check rules`, `promtool test rules` (the
unit tests that make every alert fire on its failure and stay quiet otherwise), and every PromQL
query of the Grafana dashboard parses (they are checked as recording rules). Also shows that
promtool is not a rubber stamp: a rule file with a broken expression is rejected.

Python standard library only (runs without the project's virtualenv). Exit 77 (skipped) only when
promtool is not installed."""
import json
import os
import re
import shutil
import sys
import tempfile
import unittest

import deploy_common as dc


class PromtoolTest(unittest.TestCase):
    promtool = None

    def promtool_ok(self, *args):
        out = dc.run([self.promtool, *args], timeout=120)
        self.assertEqual(out.returncode, 0, "promtool %s:\n%s%s" % (" ".join(args), out.stdout, out.stderr))
        return out.stdout + out.stderr

    def test_check_config(self):
        text = self.promtool_ok("check", "config", dc.PROM_CONFIG)
        self.assertIn("SUCCESS", text)
        self.assertRegex(text, r"SUCCESS: \d+ rules found")

    def test_check_rules(self):
        text = self.promtool_ok("check", "rules", dc.RULES_FILE)
        n = int(re.search(r"SUCCESS: (\d+) rules found", text).group(1))
        alerts = re.findall(r"^\s*- alert:\s*(\S+)", dc.read(dc.RULES_FILE), re.M)
        records = re.findall(r"^\s*- record:\s*(\S+)", dc.read(dc.RULES_FILE), re.M)
        self.assertEqual(n, len(alerts) + len(records))
        # The alerts the deployment promises (issue: node down, hit ratio falling, TTFT p99
        # high, disk nearly full, RocksDB errors).
        for required in ("KvblockCacheNodeDown", "KvblockCacheHitRatioFalling", "KvblockTTFTP99High",
                         "KvblockDiskNearlyFull", "KvblockRocksDBErrors"):
            self.assertIn(required, alerts)

    def test_rule_unit_tests(self):
        text = self.promtool_ok("test", "rules", dc.RULES_TEST_FILE)
        self.assertIn("SUCCESS", text)
        # Every alert has at least one unit test in which it fires.
        tests = dc.read(dc.RULES_TEST_FILE)
        alerts = re.findall(r"^\s*- alert:\s*(\S+)", dc.read(dc.RULES_FILE), re.M)
        for alert in alerts:
            fired = re.search(r"alertname: %s\n\s*exp_alerts:\n\s*- exp_labels" % alert, tests)
            self.assertIsNotNone(fired, "no promtool test makes %s fire" % alert)

    def test_dashboard_queries_parse(self):
        dash, exprs = dc.dashboard_exprs()
        self.assertGreaterEqual(len(exprs), 20)
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": "dashboard:query_%d" % i, "expr": dc.grafana_to_promql(e)}
            for i, (_, e) in enumerate(exprs)]}]}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "dashboard.rules.yml")
            with open(path, "w") as f:
                json.dump(rules, f)  # JSON is YAML
            text = self.promtool_ok("check", "rules", path)
        self.assertIn("SUCCESS: %d rules found" % len(exprs), text)

    def test_promtool_rejects_broken_rules(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "broken.rules.yml")
            with open(path, "w") as f:
                f.write(dc.read(dc.RULES_FILE).replace(
                    "expr: up{job=\"kvblock-cache\"} == 0", "expr: up{job=\"kvblock-cache\" == 0", 1))
            out = dc.run([self.promtool, "check", "rules", path], timeout=60)
            self.assertNotEqual(out.returncode, 0)


if __name__ == "__main__":
    PromtoolTest.promtool = shutil.which("promtool")
    if PromtoolTest.promtool is None:
        dc.skip("promtool is not installed (Debian package `prometheus`)")
    result = unittest.main(argv=[sys.argv[0], "-v"], exit=False).result
    sys.exit(0 if result.wasSuccessful() else 1)
