"""deploy_live_metrics: runs the rendered dev overlay's processes for real, on loopback, and checks
that the metrics the alert rules and the Grafana dashboard query exist in their /metrics.

From `kubectl kustomize deploy/k8s/overlays/dev` it takes the cache StatefulSet's container (args,
flag file, member list, token Secret, probes, preStop hook), the indexer Job's container and the
worker Deployment's container, maps each pod's filesystem (ConfigMap and Secret mounts, the PVC)
into a temporary directory and each pod's ports to free loopback ports, expands $(VAR) like the
kubelet, and then:
  1. starts one `kvblock cache-server` per StatefulSet replica with exactly those arguments and
     waits (bounded) for the readiness probe's path to answer 200, and the liveness probe's;
  2. writes a tiny random model (the worker's own generator) and a random corpus, runs the
     indexer once per Job completion index with the rendered arguments, then re-runs shard 0 with
     its manifests removed: every block is found in the cluster (Lookup hits);
  3. scrapes every node: the disk tiers hold each block R times, hits are counted, and every
     metric name used by the rules and the dashboard for job kvblock-cache is present;
  4. when this `kvblock` has the `worker` subcommand: starts the worker with the rendered arguments
     and checks the worker metric names the same way;
  5. runs the preStop hook against node 0 (it must drain: /readyz 503, draining gauge 1), sends
     SIGTERM and expects a clean exit well within terminationGracePeriodSeconds, then restarts
     the node on its data directory and finds the blocks still there.
Every wait is bounded; every process is killed on exit. Exit 77 only when kubectl is missing."""
import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import deploy_common as dc

ARGS = None
PROCS = []
WORDS = ("cache block passage token model layer vector kernel stream replica shard index query "
         "answer memory disk network worker cluster tensor rotate encode decode prefill attention "
         "river mountain harbor lantern meadow orchard signal quartz velvet ember glacier canyon").split()
RESULTS = {"passed": 0, "failed": 0}


def check(cond, message):
    if cond:
        RESULTS["passed"] += 1
        print("ok   " + message, flush=True)
    else:
        RESULTS["failed"] += 1
        print("FAIL " + message, flush=True)
    return cond


def note(message):
    print("skip " + message, flush=True)


def require(cond, message):
    if not check(cond, message):
        raise SystemExit(finish())


def finish():
    for p in PROCS:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]), flush=True)
    return 0 if RESULTS["failed"] == 0 else 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=5):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, socket.timeout):
        return 0, ""


def wait_http(port, path, want=200, timeout=60, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if http_get(port, path)[0] == want:
            return True
        time.sleep(0.2)
    return False


def start(argv, log, env=None):
    f = open(log, "w")
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, env={**os.environ, **(env or {})})
    f.close()
    PROCS.append(p)
    return p


class Pod:
    """One pod's view of the world mapped onto this machine: a root directory for its mounts and
    a free loopback port for each containerPort."""

    def __init__(self, name, objs, workload, container, members_map=None):
        self.name = name
        self.objs = objs
        self.workload = workload
        self.c = container
        self.root = os.path.join(ARGS.work_dir, name)
        self.ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
        self.named = {p["name"]: self.ports[p["containerPort"]] for p in container.get("ports", [])}
        self.members_map = members_map or {}
        self.env = {"POD_NAME": name, "POD_IP": "127.0.0.1"}
        for ef in container.get("envFrom", []):
            self.env.update(dc.one(objs, "ConfigMap", ef["configMapRef"]["name"])["data"])
        for e in container.get("env", []):
            if "value" in e:
                self.env[e["name"]] = e["value"]
        self.materialize()

    def path(self, p):
        return self.root + p

    def rewrite(self, text):
        """Container paths -> under root; container ports -> loopback ports; member DNS names ->
        the loopback ports of those pods."""
        text = re.sub(r"(?<![\w/.])(/etc/kvblock|/var/lib/kvblock|/models|/corpus|/tmp)(?=[/\"\s]|$)",
                      lambda m: self.root + m.group(1), text, flags=re.M)
        for member, addr in self.members_map.items():
            text = text.replace(member, addr)

        def port(m):
            host, p = m.group(1), int(m.group(2))
            if p not in self.ports:
                return m.group(0)
            return "%s:%d" % ("localhost" if host == "localhost" else "127.0.0.1", self.ports[p])
        return re.sub(r"(0\.0\.0\.0|127\.0\.0\.1|localhost):(\d+)", port, text)

    def expand(self, value, extra=None):
        env = {**self.env, **(extra or {})}
        return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)

    def materialize(self):
        spec = dc.pod_spec(self.workload)
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for m in self.c.get("volumeMounts", []):
            target = self.path(m["mountPath"])
            os.makedirs(target, exist_ok=True)
            v = vols.get(m["name"])
            if v is None:
                continue  # a volumeClaimTemplate: an empty directory
            if "configMap" in v:
                for k, val in dc.one(self.objs, "ConfigMap", v["configMap"]["name"])["data"].items():
                    with open(os.path.join(target, k), "w") as f:
                        f.write(self.rewrite(val))
            if "secret" in v:
                import base64
                s = dc.one(self.objs, "Secret", v["secret"]["secretName"])
                for k, val in s.get("data", {}).items():
                    with open(os.path.join(target, k), "wb") as f:
                        f.write(base64.b64decode(val))

    def argv(self, extra_env=None):
        return [ARGS.kvblock] + [self.rewrite(self.expand(a, extra_env)) for a in self.c["args"]]


def scrape(port):
    status, text = http_get(port, "/metrics")
    require(status == 200, "GET /metrics on :%d" % port)
    return text


def sample_sum(text, name, labels=None):
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if labels and any(lab.get(k) != v for k, v in labels.items()):
            continue
        total += float(m.group(3))
    return total


def write_corpus(path, n, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(30, 90))]
            f.write('{"id": "p%d", "text": "%s"}\n' % (i, " ".join(words)))


def metric_names_used():
    import yaml
    refs = []
    rules = yaml.safe_load(dc.read(dc.RULES_FILE))
    for g in rules["groups"]:
        for r in g["rules"]:
            refs += [(n, j, "rule " + r.get("alert", r.get("record"))) for n, j in dc.metric_refs(r["expr"])]
    dash, exprs = dc.dashboard_exprs()
    for title, e in exprs:
        refs += [(n, j, "panel " + title) for n, j in dc.metric_refs(e)]
    for var in dash["templating"]["list"]:
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        for name in re.findall(r"label_values\(\s*([a-z_:][a-z0-9_:]*)", q):
            refs.append((name, None, "variable " + var["name"]))
    return refs


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--kvblock", required=True)
    p.add_argument("--work-dir", required=True)
    p.add_argument("--model-writer", default="")
    ARGS = p.parse_args()
    kubectl = dc.kubectl_or_skip()
    shutil.rmtree(ARGS.work_dir, ignore_errors=True)
    os.makedirs(ARGS.work_dir)
    seed = int(os.environ.get("KVBLOCK_TEST_SEED", str(random.SystemRandom().randrange(1 << 30))))
    print("seed %d (set KVBLOCK_TEST_SEED to repeat)" % seed, flush=True)
    rng = random.Random(seed)

    objs, _ = dc.render(kubectl, "dev")
    subs = dc.subcommands(ARGS.kvblock)
    require(dc.run([ARGS.kvblock, "--version"]).returncode == 0, "kvblock --version (the image build runs it)")
    sts = dc.one(objs, "StatefulSet", "kvblock-cache")
    cache_c = dc.pod_spec(sts)["containers"][0]
    replicas = sts["spec"]["replicas"]
    service = sts["spec"]["serviceName"]
    grace = dc.pod_spec(sts)["terminationGracePeriodSeconds"]

    # 1. Cache nodes.
    nodes = [Pod("%s-%d" % (sts["metadata"]["name"], i), objs, sts, cache_c) for i in range(replicas)]
    grpc_port = dc.one(objs, "Service", service)["spec"]["ports"][0]["port"]
    members_map = {"%s.%s:%d" % (n.name, service, grpc_port): "127.0.0.1:%d" % n.named["grpc"] for n in nodes}
    for n in nodes:
        n.members_map = members_map
        n.materialize()
    procs = []
    t0 = time.monotonic()
    for n in nodes:
        procs.append(start(n.argv(), n.path("/cache-server.log")))
    ready_path = cache_c["readinessProbe"]["httpGet"]["path"]
    live_path = cache_c["livenessProbe"]["httpGet"]["path"]
    for n, proc in zip(nodes, procs):
        port = n.named[cache_c["readinessProbe"]["httpGet"]["port"]]
        ok = wait_http(port, ready_path, timeout=60, proc=proc)
        if not ok:
            print(dc.read(n.path("/cache-server.log"))[-3000:])
        require(ok, "%s ready on %s (rendered args: %s)" % (n.name, ready_path, " ".join(cache_c["args"][1:])))
        require(http_get(n.named["metrics"], live_path)[0] == 200, "%s live on %s" % (n.name, live_path))
    print("cache nodes ready in %.2f s" % (time.monotonic() - t0), flush=True)

    # 2. Indexer, once per completion index, then shard 0 again with its manifests removed.
    job = dc.one(objs, "Job", "kvblock-indexer")
    idx_c = dc.pod_spec(job)["containers"][0]
    blocks_total = 0
    indexed = False
    if "index" not in subs or not ARGS.model_writer:
        note("indexer run: this build has no `kvblock index` or no model writer")
    else:
        client = Pod("indexer", objs, job, idx_c, members_map)
        model_dir = client.path("/models/" + client.env["KVBLOCK_MODEL"])
        out = dc.run([ARGS.model_writer, model_dir], timeout=120)
        require(out.returncode == 0, "random model written to %s %s" % (model_dir, out.stderr))
        corpus = client.path("/corpus/" + client.env["KVBLOCK_CORPUS"])
        write_corpus(corpus, 24, rng)
        shards = job["spec"]["completions"]
        for shard in range(shards):
            t = time.monotonic()
            out = dc.run(client.argv({"JOB_COMPLETION_INDEX": str(shard)}), timeout=300)
            m = re.search(r"blocks (\d+) \(encoded (\d+), already present (\d+)\)", out.stdout)
            require(out.returncode == 0 and m is not None,
                    "index shard %d/%d with the rendered args (%.1f s)\n%s%s"
                    % (shard, shards, time.monotonic() - t, out.stdout, out.stderr[-2000:]))
            check(int(m.group(2)) > 0, "shard %d encoded %s blocks" % (shard, m.group(2)))
            blocks_total += int(m.group(2))
        for f in os.listdir(os.path.dirname(corpus)):
            if ".kvblock-index-" in f:
                os.remove(os.path.join(os.path.dirname(corpus), f))
        out = dc.run(client.argv({"JOB_COMPLETION_INDEX": "0"}), timeout=300)
        m = re.search(r"blocks (\d+) \(encoded (\d+), already present (\d+)\)", out.stdout)
        require(out.returncode == 0 and m is not None, "re-index shard 0\n" + out.stdout + out.stderr)
        check(int(m.group(2)) == 0 and int(m.group(3)) == int(m.group(1)) > 0,
              "re-run finds all %s blocks of shard 0 in the cluster (encoded %s)" % (m.group(1), m.group(2)))
        indexed = True

    # 3. Cache node metrics.
    texts = [scrape(n.named["metrics"]) for n in nodes]
    cache_names = set()
    for t in texts:
        cache_names |= dc.scraped_families(t)[0]
    if indexed:
        replication = int(client.expand(dc.flag_value(idx_c["args"], "replication")))
        inserts = sum(sample_sum(t, "kvblock_tier_inserts_total", {"tier": "disk"}) for t in texts)
        check(inserts == replication * blocks_total,
              "disk tiers inserted %d = R (%d) x %d blocks" % (inserts, replication, blocks_total))
        hits = sum(sample_sum(t, "kvblock_cache_hits_total") for t in texts)
        check(hits > 0, "cache nodes counted %d lookup hits" % hits)
        puts = sum(sample_sum(t, "kvblock_requests_total", {"method": "Put", "code": "OK"}) for t in texts)
        check(puts > 0, "cache nodes counted %d Put calls OK" % puts)

    # 4. Worker.
    worker_names = None
    dep = dc.one(objs, "Deployment", "kvblock-worker")
    wc = dc.pod_spec(dep)["containers"][0]
    if "worker" not in subs:
        note("worker: this kvblock has no `worker` subcommand yet")
    elif not indexed:
        note("worker: no model (indexer part skipped)")
    else:
        worker = Pod("kvblock-worker-0", objs, dep, wc, members_map)
        os.makedirs(worker.path("/models"), exist_ok=True)
        if not os.path.exists(worker.path("/models/" + worker.env["KVBLOCK_MODEL"])):
            shutil.copytree(model_dir, worker.path("/models/" + worker.env["KVBLOCK_MODEL"]))
        wproc = start(worker.argv(), worker.path("/worker.log"))
        port = worker.named[wc["readinessProbe"]["httpGet"]["port"]]
        ok = wait_http(port, wc["readinessProbe"]["httpGet"]["path"], timeout=120, proc=wproc)
        if not ok:
            print(dc.read(worker.path("/worker.log"))[-3000:])
        require(ok, "worker ready with the rendered args")
        token_file = dc.flag_value(wc["args"], "auth-token-file")
        token = dc.read(worker.path(token_file)).strip() if token_file else ""
        generate_once(worker.named["grpc"], corpus, rng, token)
        worker_names = dc.scraped_families(scrape(worker.named["metrics"]))[0]

    # Metric names of the rules and the dashboard.
    for name, job_name, where in sorted(set(metric_names_used()), key=str):
        if name == "up":
            continue
        if job_name == "kvblock-cache":
            check(name in cache_names, "%s (%s) is exported by the cache server" % (name, where))
        elif job_name == "kvblock-worker":
            if worker_names is None:
                note("%s (%s): no worker running" % (name, where))
            else:
                check(name in worker_names, "%s (%s) is exported by the worker" % (name, where))
        else:
            check(name in cache_names or (worker_names is not None and name in worker_names),
                  "%s (%s) is exported" % (name, where))

    # 5. preStop drain, SIGTERM, restart on the same data.
    n0, p0 = nodes[0], procs[0]
    hook = cache_c["lifecycle"]["preStop"]["exec"]["command"]
    argv = [ARGS.kvblock] + [n0.rewrite(a) for a in hook[1:]]
    out = dc.run(argv, timeout=30)
    check(out.returncode == 0 and '"draining":true' in out.stdout.replace(" ", ""),
          "preStop hook drains %s: %s%s" % (n0.name, out.stdout.strip(), out.stderr.strip()))
    check(http_get(n0.named["metrics"], ready_path)[0] == 503, "%s not ready after the drain" % n0.name)
    check(sample_sum(scrape(n0.named["metrics"]), "kvblock_cache_server_draining") == 1, "draining gauge is 1")
    check(http_get(nodes[-1].named["metrics"], ready_path)[0] == 200, "the other node stays ready")
    for n, proc in zip(nodes, procs):
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0 and "stopped cleanly" in dc.read(n.path("/cache-server.log")),
              "%s exits cleanly on SIGTERM in %.2f s (grace %d s)" % (n.name, time.monotonic() - t, grace))
    if indexed:
        t = time.monotonic()
        proc = start(n0.argv(), n0.path("/cache-server-restart.log"))
        require(wait_http(n0.named["metrics"], ready_path, timeout=60, proc=proc), "%s restarts" % n0.name)
        print("restart on its data directory ready in %.2f s" % (time.monotonic() - t), flush=True)
        blocks = sample_sum(scrape(n0.named["metrics"]), "kvblock_tier_blocks", {"tier": "disk"})
        check(blocks > 0, "%s still holds %d blocks on disk after the restart" % (n0.name, blocks))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    return finish()


def generate_once(port, corpus, rng, token):
    """One Generate call (stubs from proto/ at test time), so the worker's request and TTFT
    families have samples."""
    import importlib
    gen = os.path.join(ARGS.work_dir, "stubs")
    os.makedirs(gen, exist_ok=True)
    proto_root = os.path.join(dc.ROOT, "proto")
    protos = [os.path.join(dp, f) for dp, _, fs in os.walk(proto_root) for f in fs if f.endswith(".proto")]
    out = dc.run([sys.executable, "-m", "grpc_tools.protoc", "-I", proto_root, "--python_out", gen,
                  "--grpc_python_out", gen] + protos, timeout=120)
    require(out.returncode == 0, "Python stubs from proto/ " + out.stderr)
    sys.path.insert(0, gen)
    import grpc
    pb = importlib.import_module("kvblock.v1.inference_pb2")
    rpc = importlib.import_module("kvblock.v1.inference_pb2_grpc")
    passages = [l for l in dc.read(corpus).splitlines() if l][:3]
    texts = [re.search(r'"text": "([^"]*)"', l).group(1) for l in passages]
    req = pb.GenerateRequest(blocks=[pb.Segment(text=t) for t in texts],
                             final_block=pb.Segment(text="question: " + rng.choice(WORDS)))
    req.sampling.max_new_tokens = 4
    with grpc.insecure_channel("127.0.0.1:%d" % port) as ch:
        metadata = [("authorization", "Bearer " + token)] if token else []
        responses = list(rpc.InferenceServiceStub(ch).Generate(req, timeout=120, metadata=metadata))
    check(len(responses) > 0, "worker answered Generate with %d messages" % len(responses))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException:
        import traceback
        traceback.print_exc()
        RESULTS["failed"] += 1
        sys.exit(finish())
