"""deploy_consistency: the rendered manifests agree with the real `kvblock` binary and with
themselves, in every overlay:
  - every flag a container or a lifecycle hook passes exists in
    `kvblock <subcommand> --help` (the `worker` subcommand is checked once the binary has it);
  - ports: listen flags = containerPorts = probe ports = Service targetPorts = NetworkPolicy
    ports = ServiceMonitor ports; readiness on /readyz, liveness on /healthz;
  - the member list is exactly the StatefulSet's stable DNS names on the gRPC port;
  - the Indexed Job's --num-shards equals its completions and --shard is the completion index;
  - every $(VAR) is defined, every file a flag names is mounted (ConfigMap key, Secret key);
  - a cache node's shared-memory socket is on a hostPath that the workers mount at the same path;
  - drain timing fits terminationGracePeriodSeconds; the memory tier fits the memory limit;
  - NetworkPolicies admit only workers and indexers to the cache's data ports;
  - ServiceMonitor jobs = prometheus.yml jobs = the jobs alerts and dashboard query; the
    PrometheusRule carries exactly the rule file; every alert's runbook exists in docs/deploy.md;
  - the Dockerfiles: non-root user = runAsUser, entrypoint = the hook's binary, every port
    exposed, and the runtime stage installs the Debian package of every shared library the
    built `kvblock` needs (dpkg -S on this Debian 12 machine), packages that exist in Debian 12,
    and the build stage's CMake options configure the project.
Exit 77 (skipped) only when kubectl with a recent kustomize is missing."""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import deploy_common as dc

ARGS = None
IMAGE_UID = None


def dockerfile_stages(path):
    """{stage name: [instruction lines]} with continuation lines joined."""
    text = dc.read(path)
    text = re.sub(r"\\\n", " ", text)
    stages = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(1) or "stage%d" % len(stages)
            stages[current] = []
            continue
        if current:
            stages[current].append(line)
    return stages


def dockerfile_args(path):
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dc.read(path), re.M))


def runtime_packages(path):
    """Packages the runtime stage installs (ARG defaults substituted)."""
    args = dockerfile_args(path)
    pkgs = set()
    for line in dockerfile_stages(path)["runtime"]:
        for m in re.finditer(r"apt-get install\s+(.*?)(?:&&|$)", line):
            for word in m.group(1).split():
                if word.startswith("-"):
                    continue
                word = re.sub(r"\$\{(\w+)\}", lambda v: args.get(v.group(1), v.group(0)), word)
                pkgs.add(word)
    return pkgs


class ConsistencyTest(unittest.TestCase):
    kubectl = None
    rendered = {}

    @classmethod
    def setUpClass(cls):
        for overlay in dc.overlays():
            cls.rendered[overlay], _ = dc.render(cls.kubectl, overlay)
        cls.subs = dc.subcommands(ARGS.kvblock)
        cls.unchecked = []

    @classmethod
    def tearDownClass(cls):
        for line in sorted(set(cls.unchecked)):
            print("NOT CHECKED: " + line)

    # --- helpers -------------------------------------------------------------------------
    def kvblock_containers(self, objs):
        for w in dc.workloads(objs):
            for c in dc.pod_spec(w)["containers"]:
                if re.search(r"/kvblock(-cuda)?:[\w.-]+$", c["image"]):
                    yield w, c

    def configmap_file(self, objs, workload, container, path):
        src = dc.mounted_file(objs, workload, container, path)
        self.assertIsNotNone(src, "%s: nothing mounted at %s" % (container["name"], path))
        self.assertEqual(src[0], "configMap", path)
        cm = dc.one(objs, "ConfigMap", src[1])
        self.assertIn(src[2], cm["data"], "%s has no key %s" % (src[1], src[2]))
        return cm["data"][src[2]]

    def env_names(self, objs, container):
        names = {e["name"] for e in container.get("env", [])}
        for ef in container.get("envFrom", []):
            if "configMapRef" in ef:
                names |= set(dc.one(objs, "ConfigMap", ef["configMapRef"]["name"])["data"])
        return names

    def expand(self, objs, container, value):
        env = {}
        for ef in container.get("envFrom", []):
            if "configMapRef" in ef:
                env.update(dc.one(objs, "ConfigMap", ef["configMapRef"]["name"])["data"])
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
        return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)

    def check_flags(self, overlay, sub, flags, where):
        if sub not in self.subs:
            self.assertEqual(sub, "worker", "%s: kvblock has no subcommand %r" % (where, sub))
            self.unchecked.append("%s: flags of `kvblock worker` (%s): this kvblock has no worker "
                                  "subcommand yet" % (overlay, " ".join(sorted(flags))))
            return
        known = dc.flags_of(ARGS.kvblock, sub)
        for f in flags:
            self.assertIn(f, known, "%s %s: `kvblock %s` has no flag --%s" % (overlay, where, sub, f))

    def port_of(self, container, name):
        for p in container.get("ports", []):
            if p["name"] == name:
                return p["containerPort"]
        self.fail("%s has no port named %s" % (container["name"], name))

    def cache_settings(self, objs):
        """The cache StatefulSet, its container, and its flags ($(VAR) expanded) as a dict."""
        sts = dc.one(objs, "StatefulSet", "kvblock-cache")
        c = dc.pod_spec(sts)["containers"][0]
        flags = {}
        for a in c["args"][1:]:
            if "=" in a:
                flags[dc.flag_name(a)] = self.expand(objs, c, a.split("=", 1)[1])
        return sts, c, flags

    def hook_flags(self, c):
        hook = c["lifecycle"]["preStop"]["exec"]["command"]
        return {dc.flag_name(a): a.split("=", 1)[1] for a in hook if a.startswith("--") and "=" in a}

    # --- flags ---------------------------------------------------------------------------
    def test_flags_exist_in_kvblock_help(self):
        for overlay, objs in self.rendered.items():
            for w, c in self.kvblock_containers(objs):
                args = c["args"]
                sub = args[0]
                flags = [dc.flag_name(a) for a in args[1:] if dc.flag_name(a)]
                self.assertTrue(flags)
                for a in args[1:]:
                    self.assertTrue(a.startswith("--") and "=" in a or a.startswith("--"),
                                    "%s %s: positional argument %r" % (overlay, c["name"], a))
                self.check_flags(overlay, sub, flags, c["name"])
                # No flag files: `--config` on a subcommand is accepted but not read by the CLI11
                # of Debian 12 (2.1.2), so every setting is an argument.
                self.assertIsNone(dc.flag_value(args, "config"), "%s %s: --config is ignored" % (overlay, c["name"]))
                # Lifecycle hooks run kvblock subcommands too.
                hook = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
                if hook:
                    self.assertEqual(hook[0], "/usr/local/bin/kvblock")
                    hook_sub = hook[1]
                    self.assertIn(hook_sub, self.subs)
                    hook_flags = [dc.flag_name(a) for a in hook[2:] if dc.flag_name(a)]
                    self.check_flags(overlay, hook_sub, hook_flags, "preStop")
                    self.assertFalse(any("$(" in a for a in hook), "exec hooks get no $(VAR) expansion")
                    positional = [a for a in hook[2:] if not a.startswith("--")]
                    self.assertEqual(positional, ["drain", "0"], "flags go before the drain subcommand")
                    rc, text = dc.kvblock_help(ARGS.kvblock, hook_sub, "drain")
                    self.assertEqual(rc, 0, text)

    def test_help_parser_sees_real_flags(self):
        # Guards the flag check itself: known flags are found, invented ones are not.
        flags = dc.flags_of(ARGS.kvblock, "cache-server")
        self.assertIn("data-dir", flags)
        self.assertIn("memory-bytes", flags)
        self.assertNotIn("no-such-flag", flags)
        self.assertIn("cache-server", self.subs)
        self.assertIn("cache-ctl", self.subs)

    def test_env_references_are_defined(self):
        for overlay, objs in self.rendered.items():
            for w, c in self.kvblock_containers(objs):
                defined = self.env_names(objs, c)
                if w["kind"] == "Job" and w["spec"].get("completionMode") == "Indexed":
                    defined.add("JOB_COMPLETION_INDEX")
                for a in c["args"]:
                    for var in re.findall(r"\$\((\w+)\)", a):
                        self.assertIn(var, defined, "%s %s: $(%s) undefined" % (overlay, c["name"], var))

    def test_files_named_by_flags_are_mounted(self):
        # --cache names a members file when its value holds a '/' (else it is host:port,...).
        path_flags = {"config", "cache", "auth-token-file", "tls-cert", "tls-key", "tls-ca",
                      "client-ca", "data-dir", "model", "corpus", "shm-socket"}
        for overlay, objs in self.rendered.items():
            secrets = {s["metadata"]["name"]: s for s in dc.find(objs, "Secret")}
            for w, c in self.kvblock_containers(objs):
                values = {}
                for a in c["args"]:
                    if dc.flag_name(a) in path_flags and "=" in a:
                        value = self.expand(objs, c, a.split("=", 1)[1])
                        if dc.flag_name(a) != "cache" or "/" in value:
                            values[dc.flag_name(a)] = value
                for flag, path in values.items():
                    src = dc.mounted_file(objs, w, c, path)
                    self.assertIsNotNone(src, "%s %s: --%s=%s is not on a volume" % (overlay, c["name"], flag, path))
                    kind, name, key = src
                    if kind == "configMap":
                        self.assertIn(key, dc.one(objs, "ConfigMap", name)["data"], path)
                    elif kind == "secret":
                        if name in secrets:
                            data = {**secrets[name].get("data", {}), **secrets[name].get("stringData", {})}
                            self.assertIn(key, data, "%s: Secret %s has no key %s" % (overlay, name, key))
                        else:
                            # Created by the operator: docs/deploy.md must say how, with this key.
                            docs = dc.read(dc.DOCS)
                            self.assertTrue(re.search(r"kubectl (-n \S+ )?create secret [^\n]*%s" % re.escape(name), docs),
                                            "%s: docs/deploy.md does not say how to create Secret %s" % (overlay, name))
                            self.assertIn(key, docs, "%s: docs/deploy.md never names key %s of %s" % (overlay, key, name))
                    elif kind == "pvc" and flag == "data-dir":
                        # RocksDB creates the directory, but only under an existing parent.
                        self.assertNotEqual(key, "", "data-dir should be a directory inside the volume")
                        self.assertNotIn("/", key)

    def test_shm_socket_is_shared_with_the_workers(self):
        # A cache node's --shm-socket must be on the machine's own filesystem (a hostPath), which
        # every worker mounts at the same path: workers connect to the path the node advertises.
        for overlay, objs in self.rendered.items():
            cache = dc.one(objs, "StatefulSet", "kvblock-cache")
            c = dc.pod_spec(cache)["containers"][0]
            socket = [a.split("=", 1)[1] for a in c["args"] if dc.flag_name(a) == "shm-socket" and "=" in a]
            if not socket or socket[0] == "":
                continue
            path = self.expand(objs, c, socket[0])
            src = dc.mounted_file(objs, cache, c, path)
            self.assertIsNotNone(src, "%s: --shm-socket=%s is not on a volume" % (overlay, path))
            self.assertEqual(src[0], "hostPath", "%s: --shm-socket=%s is not on the machine's filesystem" % (overlay, path))
            directory = os.path.dirname(path)
            worker = dc.one(objs, "Deployment", "kvblock-worker")
            wsrc = dc.mounted_file(objs, worker, dc.pod_spec(worker)["containers"][0], directory)
            self.assertEqual(wsrc and wsrc[:2], src[:2], "%s: workers do not mount %s from the machine's %s"
                             % (overlay, directory, src[1]))

    # --- ports and probes ----------------------------------------------------------------
    def test_ports_agree(self):
        for overlay, objs in self.rendered.items():
            for w, c in self.kvblock_containers(objs):
                ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                self.assertEqual(len(ports), len(c.get("ports", [])), "duplicate port names")
                listen = {}
                for a in c["args"]:
                    if dc.flag_name(a) in ("listen", "metrics-listen", "ucx-listen"):
                        listen[dc.flag_name(a)] = a.split("=", 1)[1]
                expected = {"listen": "grpc", "metrics-listen": "metrics", "ucx-listen": "ucx"}
                for flag, addr in listen.items():
                    port = int(addr.rsplit(":", 1)[1])
                    self.assertEqual(port, ports.get(expected[flag]),
                                     "%s %s: --%s=%s vs containerPort %s" % (overlay, c["name"], flag, addr, ports))
                if ports:
                    self.assertEqual(set(ports), {expected[f] for f in listen},
                                     "%s %s: every port is listened on" % (overlay, c["name"]))
                for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                                    ("startupProbe", "/healthz")):
                    if w["kind"] == "Job":
                        continue
                    p = c.get(probe)
                    self.assertIsNotNone(p, "%s %s has no %s" % (overlay, c["name"], probe))
                    self.assertEqual(p["httpGet"]["path"], path)
                    self.assertEqual(p["httpGet"]["port"], "metrics")
                    self.assertIn("metrics", ports)

    def test_services_select_pods_and_ports(self):
        for overlay, objs in self.rendered.items():
            for svc in dc.find(objs, "Service"):
                sel = svc["spec"]["selector"]
                matches = [w for w in dc.workloads(objs)
                           if all(dc.pod_labels(w).get(k) == v for k, v in sel.items())]
                self.assertEqual(len(matches), 1, "%s Service %s selects %d workloads" % (
                    overlay, svc["metadata"]["name"], len(matches)))
                c = dc.pod_spec(matches[0])["containers"][0]
                for p in svc["spec"]["ports"]:
                    self.assertEqual(p["targetPort"], p["name"])
                    self.assertEqual(self.port_of(c, p["targetPort"]), p["port"],
                                     "%s %s port %s" % (overlay, svc["metadata"]["name"], p["name"]))

    # --- cluster membership, shards, timing, memory ---------------------------------------
    def test_members_are_the_statefulset_dns_names(self):
        for overlay, objs in self.rendered.items():
            sts, c, conf = self.cache_settings(objs)
            svc = dc.one(objs, "Service", sts["spec"]["serviceName"])
            self.assertEqual(svc["spec"]["clusterIP"], "None", "member DNS needs a headless Service")
            grpc = self.port_of(c, "grpc")
            want = ["%s-%d.%s:%d" % (sts["metadata"]["name"], i, svc["metadata"]["name"], grpc)
                    for i in range(sts["spec"]["replicas"])]
            clients = [wc for wc in self.kvblock_containers(objs) if wc[1]["args"][0] in ("worker", "index")]
            self.assertEqual(len(clients), 2)
            for w, cc in clients:
                members = self.configmap_file(objs, w, cc, dc.flag_value(cc["args"], "cache"))
                lines = [l.split("#")[0].strip() for l in members.splitlines()]
                self.assertEqual([l for l in lines if l], want, overlay)
                replication = int(self.expand(objs, cc, dc.flag_value(cc["args"], "replication")))
                self.assertGreaterEqual(replication, 2, "one node down must lose no block")
                self.assertLessEqual(replication, len(want))
                pdb = dc.one(objs, "PodDisruptionBudget", "kvblock-cache")
                self.assertLess(pdb["spec"]["maxUnavailable"], replication)
            # The preStop hook talks to this pod's own gRPC port, with the same credentials.
            hook = self.hook_flags(c)
            self.assertEqual(hook["cache"], "localhost:%d" % grpc)
            self.assertEqual(hook["auth-token-file"], conf["auth-token-file"])
            for client_flag, server_flag in (("tls-ca", "client-ca"), ("tls-cert", "tls-cert"), ("tls-key", "tls-key")):
                self.assertEqual(client_flag in hook, server_flag in conf, "%s: preStop TLS flags" % overlay)
            # Node ids are the pod names; UCX binds the pod IP (it advertises what it binds).
            self.assertIn("--node-id=$(POD_NAME)", c["args"])
            self.assertIn("--ucx-listen=$(POD_IP):%d" % self.port_of(c, "ucx"), c["args"])

    def test_indexer_shards(self):
        for overlay, objs in self.rendered.items():
            job = dc.one(objs, "Job", "kvblock-indexer")
            self.assertEqual(job["spec"]["completionMode"], "Indexed")
            c = dc.pod_spec(job)["containers"][0]
            self.assertEqual(c["args"][0], "index")
            self.assertEqual(dc.flag_value(c["args"], "shard"), "$(JOB_COMPLETION_INDEX)")
            self.assertEqual(int(dc.flag_value(c["args"], "num-shards")), job["spec"]["completions"], overlay)
            self.assertLessEqual(job["spec"]["parallelism"], job["spec"]["completions"])
            self.assertIn("--resume", c["args"], "retried pods must continue, not restart")

    def test_drain_fits_grace_period_and_memory_fits_limit(self):
        for overlay, objs in self.rendered.items():
            sts, c, conf = self.cache_settings(objs)
            ctl = self.hook_flags(c)
            grace = dc.pod_spec(sts)["terminationGracePeriodSeconds"]
            # preStop (one cache-ctl call, up to 2 attempts) + drain + RocksDB close headroom.
            need = 2 * float(ctl["timeout-s"]) + float(conf["drain-timeout-s"]) + 10
            self.assertGreaterEqual(grace, need, "%s: grace %ss < %ss" % (overlay, grace, need))
            limit = dc.parse_bytes(c["resources"]["limits"]["memory"])
            self.assertEqual(dc.parse_bytes(c["resources"]["requests"]["memory"]), limit,
                             "cache nodes get guaranteed memory")
            self.assertLessEqual(dc.parse_bytes(conf["memory-bytes"]), 0.85 * limit,
                                 "%s: memory tier leaves too little for RocksDB and gRPC" % overlay)
            self.assertEqual(conf["data-dir"].rsplit("/", 1)[0],
                             next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data"))

    def test_security_contexts(self):
        for overlay, objs in self.rendered.items():
            for w, c in self.kvblock_containers(objs):
                spec = dc.pod_spec(w)
                self.assertTrue(spec["securityContext"]["runAsNonRoot"])
                self.assertEqual(spec["securityContext"]["runAsUser"], IMAGE_UID)
                self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
                self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
                self.assertFalse(spec["automountServiceAccountToken"])
                self.assertIn(":", c["image"].rsplit("/", 1)[-1], "images carry a tag")
            for w in dc.workloads(objs):
                gpu = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                          for c in dc.pod_spec(w)["containers"])
                image = dc.pod_spec(w)["containers"][0]["image"]
                self.assertEqual(gpu, "/kvblock-cuda:" in image,
                                 "%s %s: GPU pods run the CUDA image, others the CPU one" % (overlay, w["metadata"]["name"]))
                if w["metadata"]["name"] == "kvblock-worker" and gpu:
                    self.assertIn("--backend=$(KVBLOCK_BACKEND)", dc.pod_spec(w)["containers"][0]["args"])
                    self.assertEqual(configmap_value(objs, "kvblock-settings", "KVBLOCK_BACKEND"), "cuda")

    # --- network policies ------------------------------------------------------------------
    def test_network_policies(self):
        def admits(policy, labels, namespace_labels, port_name):
            for rule in policy["spec"].get("ingress", []):
                if "ports" in rule and port_name not in [p["port"] for p in rule["ports"]]:
                    continue
                peers = rule.get("from")
                if not peers:
                    return True
                for peer in peers:
                    if "namespaceSelector" in peer and "podSelector" not in peer:
                        ns = peer["namespaceSelector"]
                        if all(namespace_labels.get(k) == v for k, v in ns.get("matchLabels", {}).items()):
                            return True
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        if selector_matches(peer["podSelector"], labels) and namespace_labels.get("same"):
                            return True
            return False

        for overlay, objs in self.rendered.items():
            ns = next(o["metadata"]["namespace"] for o in objs)
            same = {"same": True, "kubernetes.io/metadata.name": ns}
            monitoring = {"kubernetes.io/metadata.name": "monitoring"}
            other = {"kubernetes.io/metadata.name": "apps"}
            labels = {w["metadata"]["name"]: dc.pod_labels(w) for w in dc.workloads(objs)}
            sts = dc.one(objs, "StatefulSet", "kvblock-cache")
            cache_ports = [p["name"] for p in dc.pod_spec(sts)["containers"][0]["ports"]]
            pol = [p for p in dc.find(objs, "NetworkPolicy")
                   if selector_matches(p["spec"]["podSelector"], labels["kvblock-cache"])]
            self.assertEqual(len(pol), 1)
            pol = pol[0]
            self.assertIn("Ingress", pol["spec"]["policyTypes"])
            for port in cache_ports:
                if port == "metrics":
                    self.assertTrue(admits(pol, {}, monitoring, port))
                    self.assertFalse(admits(pol, {}, other, port))
                    continue
                self.assertTrue(admits(pol, labels["kvblock-worker"], same, port), port)
                self.assertTrue(admits(pol, labels["kvblock-indexer"], same, port), port)
                self.assertFalse(admits(pol, labels["kvblock-cache"], same, port), port)
                self.assertFalse(admits(pol, {"app": "something-else"}, same, port), port)
                self.assertFalse(admits(pol, labels["kvblock-worker"], other, port), port)
                self.assertFalse(admits(pol, {}, monitoring, port), port)
            # Every kvblock pod is covered by some policy.
            for name, l in labels.items():
                self.assertTrue(any(selector_matches(p["spec"]["podSelector"], l)
                                    for p in dc.find(objs, "NetworkPolicy")), name)

    # --- monitoring ------------------------------------------------------------------------
    def test_monitoring_jobs_agree(self):
        import yaml
        prom = yaml.safe_load(dc.read(dc.PROM_CONFIG))
        prom_jobs = {s["job_name"] for s in prom["scrape_configs"]}
        for sc in prom["scrape_configs"]:
            for sd in sc.get("dns_sd_configs", []):
                for name in sd["names"]:
                    svc_name = name.split(".")[0]
                    for overlay, objs in self.rendered.items():
                        svc = dc.one(objs, "Service", svc_name)
                        self.assertEqual(svc["spec"]["clusterIP"], "None")
                        self.assertTrue(svc["spec"].get("publishNotReadyAddresses"),
                                        "a failing pod must stay a target (up == 0)")
                        self.assertEqual(svc["metadata"]["labels"]["kvblock.io/job"], sc["job_name"])
                        self.assertIn(sd["port"], [p["port"] for p in svc["spec"]["ports"] if p["name"] == "metrics"])
        for overlay, objs in self.rendered.items():
            sm_jobs = set()
            for sm in dc.find(objs, "ServiceMonitor"):
                svcs = [s for s in dc.find(objs, "Service")
                        if selector_matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
                self.assertEqual(len(svcs), 1, sm["metadata"]["name"])
                svc = svcs[0]
                for ep in sm["spec"]["endpoints"]:
                    self.assertIn(ep["port"], [p["name"] for p in svc["spec"]["ports"]])
                    self.assertEqual(ep.get("path", "/metrics"), "/metrics")
                sm_jobs.add(svc["metadata"]["labels"][sm["spec"]["jobLabel"]])
            self.assertEqual(sm_jobs, prom_jobs, overlay)
        used = set()
        rules = yaml.safe_load(dc.read(dc.RULES_FILE))
        for g in rules["groups"]:
            for r in g["rules"]:
                used |= set(re.findall(r'job\s*=\s*"([^"]+)"', r["expr"]))
        _, exprs = dc.dashboard_exprs()
        for _, e in exprs:
            used |= set(re.findall(r'job\s*=\s*"([^"]+)"', e))
            for alt in re.findall(r'job\s*=~\s*"([^"]+)"', e):
                used |= set(alt.split("|"))
        self.assertEqual(used, prom_jobs)

    def test_prometheusrule_equals_rule_file(self):
        import yaml
        rules = yaml.safe_load(dc.read(dc.RULES_FILE))
        for overlay, objs in self.rendered.items():
            pr = dc.one(objs, "PrometheusRule", "kvblock")
            self.assertEqual(pr["spec"], rules, overlay)
            cm = dc.one(objs, "ConfigMap", "kvblock-prometheus")
            self.assertEqual(yaml.safe_load(cm["data"]["kvblock-alerts.rules.yml"]), rules)

    def test_runbooks_exist(self):
        import yaml
        docs = dc.read(dc.DOCS)
        anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                   for h in re.findall(r"^#+\s+(.*)$", docs, re.M)}
        rules = yaml.safe_load(dc.read(dc.RULES_FILE))
        alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
        self.assertGreaterEqual(len(alerts), 5)
        for r in alerts:
            url = r["annotations"]["runbook_url"]
            path, anchor = url.split("#")
            self.assertEqual(path, "docs/deploy.md")
            self.assertIn(anchor, anchors, "%s: no runbook heading #%s in docs/deploy.md" % (r["alert"], anchor))
            self.assertIn(r["labels"]["severity"], ("critical", "warning", "info"))

    def test_dashboard(self):
        dash, exprs = dc.dashboard_exprs()
        self.assertEqual(dash["uid"], "kvblock-overview")
        ids = []

        def walk(panels):
            for p in panels:
                ids.append(p["id"])
                walk(p.get("panels", []))
        walk(dash["panels"])
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique")
        for title, e in exprs:
            self.assertIn('namespace=~"$namespace"', e, title)
        for overlay, objs in self.rendered.items():
            cm = dc.one(objs, "ConfigMap", "kvblock-grafana-dashboard")
            self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
            self.assertEqual(cm["data"]["kvblock-dashboard.json"], dc.read(dc.DASHBOARD))

    # --- container files -------------------------------------------------------------------
    def test_dockerfiles(self):
        all_ports = set()
        for objs in self.rendered.values():
            for w, c in self.kvblock_containers(objs):
                all_ports |= {p["containerPort"] for p in c.get("ports", [])}
        for path in dc.DOCKERFILES:
            stages = dockerfile_stages(path)
            self.assertIn("build", stages)
            self.assertIn("runtime", stages)
            self.assertEqual(list(stages)[-1], "runtime", "the last stage is the image")
            runtime = stages["runtime"]
            self.assertIn("COPY --from=build /build/kvblock /usr/local/bin/kvblock", runtime)
            self.assertIn('ENTRYPOINT ["/usr/local/bin/kvblock"]', runtime)
            user = [l for l in runtime if l.startswith("USER ")]
            self.assertEqual(user, ["USER %d:%d" % (IMAGE_UID, IMAGE_UID)])
            self.assertIn("--uid %d" % IMAGE_UID, " ".join(runtime))
            exposed = {int(p) for l in runtime if l.startswith("EXPOSE") for p in l.split()[1:]}
            self.assertEqual(all_ports - exposed, set(), path)
            self.assertTrue(os.path.isfile(path + ".dockerignore"))
            ignore = dc.read(path + ".dockerignore").split()
            for pattern in ("build-*", ".venv", ".git"):
                self.assertIn(pattern, ignore)

    def test_runtime_stage_has_every_shared_library(self):
        """Each DT_NEEDED library of the built kvblock (resolved by ldd) belongs to a Debian package
        the runtime stage installs (or to the base image: libc6, libgcc-s1, libstdc++6); CUDA
        libraries map to NVIDIA's cuda-cudart/libcublas packages of the Dockerfile's version."""
        if not shutil.which("dpkg"):
            self.skipTest("not a Debian system")
        readelf = dc.run(["readelf", "-d", ARGS.kvblock], timeout=60)
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf.stdout)
        self.assertGreater(len(needed), 5)
        ldd = dc.run(["ldd", ARGS.kvblock], timeout=60).stdout
        paths = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
        base_image = {"libc6", "libgcc-s1", "libstdc++6"}
        # One dpkg -S for every library (it is slow per call): path -> package.
        owners = {}
        resolved = {lib: os.path.realpath(paths[lib]) for lib in needed if lib in paths}
        query = sorted(set(resolved.values()) | {paths[l] for l in resolved})
        out = dc.run(["dpkg", "-S"] + query, timeout=120)
        for line in out.stdout.splitlines():
            pkg, _, path = line.partition(": ")
            owners[path.strip()] = pkg.split(":")[0].strip()
        cuda_major = None
        for path in dc.DOCKERFILES:
            pkgs = runtime_packages(path)
            is_cuda = path.endswith(".cuda")
            for lib in needed:
                m = re.match(r"lib(cudart|cublas|cublasLt)\.so\.(\d+)", lib)
                if m:
                    cuda_major = m.group(2)
                    version = dockerfile_args(path).get("CUDA_VERSION", "")
                    if not is_cuda:
                        continue  # the CPU image is built with -DKVBLOCK_WITH_CUDA=OFF
                    self.assertTrue(version.startswith(cuda_major + "-"),
                                    "CUDA_VERSION %s vs %s" % (version, lib))
                    want = "cuda-cudart-" + version if m.group(1) == "cudart" else "libcublas-" + version
                    self.assertIn(want, pkgs, "%s: %s" % (path, lib))
                    continue
                self.assertIn(lib, paths, "ldd cannot resolve %s" % lib)
                pkg = owners.get(resolved[lib]) or owners.get(paths[lib])
                self.assertIsNotNone(pkg, "%s (%s) belongs to no Debian package" % (lib, resolved[lib]))
                self.assertTrue(pkg in pkgs or pkg in base_image,
                                "%s needs %s (for %s), which the runtime stage does not install"
                                % (path, pkg, lib))
            # The Debian package names exist in Debian 12 (NVIDIA's come from their repository).
            debian = sorted(p for p in pkgs if not p.startswith(("cuda-", "libcublas-")))
            shown = dc.run(["apt-cache", "show", "--no-all-versions"] + debian, timeout=120)
            found = set(re.findall(r"^Package: (\S+)", shown.stdout, re.M))
            self.assertEqual(set(debian) - found, set(), "%s: not Debian 12 packages" % path)
        if cuda_major is None:
            self.unchecked.append("Dockerfile.cuda runtime CUDA packages against a CUDA build "
                                  "(this kvblock was built without CUDA)")

    def test_build_stage_cmake_options_configure(self):
        """The build stage's `cmake -S /src -B /build ...` options configure this checkout."""
        cmake = shutil.which("cmake")
        self.assertIsNotNone(cmake)
        for path in dc.DOCKERFILES[:1]:  # the CUDA one needs nvcc, configured by CI's own build
            line = next(l for l in dockerfile_stages(path)["build"] if "cmake -S /src" in l)
            opts = re.findall(r"(-D\w+=\S+|-G \w+)", line)
            self.assertTrue(any(o.startswith("-DKVBLOCK_BUILD_TESTS=OFF") for o in opts))
            with tempfile.TemporaryDirectory(dir=ARGS.work_dir) as tmp:
                argv = [cmake, "-S", dc.ROOT, "-B", tmp]
                for o in opts:
                    argv += o.split(" ", 1) if o.startswith("-G") else [o]
                out = dc.run(argv, timeout=300)
                self.assertEqual(out.returncode, 0, out.stdout[-3000:] + out.stderr[-3000:])
                self.assertTrue(os.path.isfile(os.path.join(tmp, "build.ninja")))
                targets = dc.run([shutil.which("ninja") or "ninja", "-C", tmp, "-t", "targets", "all"], timeout=120)
                self.assertRegex(targets.stdout, r"(?m)^kvblock: ")


def selector_matches(selector, labels):
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        have = labels.get(e["key"])
        if e["operator"] == "In" and have not in e["values"]:
            return False
        if e["operator"] == "NotIn" and have in e["values"]:
            return False
        if e["operator"] == "Exists" and e["key"] not in labels:
            return False
        if e["operator"] == "DoesNotExist" and e["key"] in labels:
            return False
    return True


def configmap_value(objs, name, key):
    return dc.configmap_by_prefix(objs, name)["data"][key]


def main():
    global ARGS, IMAGE_UID
    p = argparse.ArgumentParser()
    p.add_argument("--kvblock", required=True)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--cmake-configure", action="store_true",
                   help="run only the Dockerfile build-stage CMake configure check (its own ctest "
                        "entry: it takes most of a minute); without it, everything else")
    ARGS, rest = p.parse_known_args()
    name = "ConsistencyTest.test_build_stage_cmake_options_configure"
    if ARGS.cmake_configure:
        rest = rest + [name]
    else:
        delattr(ConsistencyTest, "test_build_stage_cmake_options_configure")
    os.makedirs(ARGS.work_dir, exist_ok=True)
    m = re.search(r"^USER (\d+):", dc.read(dc.DOCKERFILES[0]), re.M)
    IMAGE_UID = int(m.group(1))
    ConsistencyTest.kubectl = dc.kubectl_or_skip()
    result = unittest.main(argv=[sys.argv[0], "-v"] + rest, exit=False).result
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
