"""Shared helpers of the deploy/ tests: paths, tool discovery, kustomize rendering, `kvblock --help`
parsing, container/volume lookups in rendered manifests, and metric names in PromQL.

Every external command runs with a time limit; nothing here talks to a network except loopback.
"""
import json
import os
import re
import shutil
import subprocess
import sys

SKIP = 77  # ctest SKIP_RETURN_CODE

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
OVERLAYS_DIR = os.path.join(K8S, "overlays")
MONITORING = os.path.join(DEPLOY, "monitoring")
PROM_DIR = os.path.join(MONITORING, "prometheus")
RULES_FILE = os.path.join(PROM_DIR, "kvblock-alerts.rules.yml")
RULES_TEST_FILE = os.path.join(PROM_DIR, "kvblock-alerts.test.yml")
PROM_CONFIG = os.path.join(PROM_DIR, "prometheus.yml")
DASHBOARD = os.path.join(MONITORING, "grafana", "kvblock-dashboard.json")
DOCKERFILES = [os.path.join(DEPLOY, "docker", "Dockerfile"),
               os.path.join(DEPLOY, "docker", "Dockerfile.cuda")]
DOCS = os.path.join(ROOT, "docs", "deploy.md")

# Kustomize features the manifests use (`patches`, `replicas`, `labels` in generators) need
# kustomize v4 or newer; Debian 12's kubectl 1.20 embeds v2.0.3.
MIN_KUSTOMIZE = (4, 0)


def skip(message):
    print("SKIP: " + message, flush=True)
    sys.exit(SKIP)


def run(argv, timeout=120, **kwargs):
    """Runs argv; returns CompletedProcess with text output. Raises on timeout."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


def overlays():
    return sorted(d for d in os.listdir(OVERLAYS_DIR)
                  if os.path.isfile(os.path.join(OVERLAYS_DIR, d, "kustomization.yaml")))


def kubectl_or_skip():
    """Path of a kubectl whose embedded kustomize is new enough; exits 77 otherwise."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        skip("kubectl is not installed, so `kubectl kustomize` cannot render deploy/k8s "
             "(Debian 12 only ships kubectl 1.20, whose kustomize v2.0.3 is too old; install "
             "kubectl >= 1.21)")
    out = run([kubectl, "version", "--client"], timeout=60)
    m = re.search(r"Kustomize Version:\s*v(\d+)\.(\d+)", out.stdout + out.stderr)
    if not m:
        skip("`kubectl version --client` names no embedded kustomize (kubectl < 1.21): "
             "cannot render deploy/k8s; install kubectl >= 1.21")
    version = (int(m.group(1)), int(m.group(2)))
    if version < MIN_KUSTOMIZE:
        skip("kubectl embeds kustomize v%d.%d; deploy/k8s needs v%d.%d or newer"
             % (version + MIN_KUSTOMIZE))
    return kubectl


def render(kubectl, overlay):
    """(objects, stderr) of `kubectl kustomize` for one overlay."""
    import yaml
    out = run([kubectl, "kustomize", os.path.join(OVERLAYS_DIR, overlay)], timeout=120)
    if out.returncode != 0:
        raise AssertionError("kubectl kustomize %s failed:\n%s" % (overlay, out.stderr))
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    return docs, out.stderr


def find(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def one(objs, kind, name):
    found = find(objs, kind, name)
    if len(found) != 1:
        raise AssertionError("expected one %s/%s, found %d" % (kind, name, len(found)))
    return found[0]


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return obj["spec"]
    return None


def pod_labels(obj):
    return obj["spec"]["template"]["metadata"].get("labels", {})


def workloads(objs):
    return [o for o in objs if pod_spec(o) is not None]


def configmap_by_prefix(objs, name):
    """The ConfigMap generated as `name` (kustomize appends a hash suffix)."""
    for o in find(objs, "ConfigMap"):
        n = o["metadata"]["name"]
        if n == name or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", n):
            return o
    raise AssertionError("no ConfigMap %s" % name)


def mounted_file(objs, workload, container, path):
    """Where `path` inside `container` comes from: ('configMap'|'secret'|'pvc'|'emptyDir', source
    name, key or sub-path; 'hostPath', the machine's path, sub-path) for the longest volumeMount prefix; None if nothing is mounted there."""
    spec = pod_spec(workload)
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    if best is None:
        return None
    rest = path[len(best["mountPath"].rstrip("/")):].lstrip("/")
    vol = next(v for v in spec.get("volumes", []) if v["name"] == best["name"]) \
        if any(v["name"] == best["name"] for v in spec.get("volumes", [])) else None
    if vol is None:  # a volumeClaimTemplate
        return ("pvc", best["name"], rest)
    if "configMap" in vol:
        return ("configMap", vol["configMap"]["name"], rest)
    if "secret" in vol:
        return ("secret", vol["secret"]["secretName"], rest)
    if "persistentVolumeClaim" in vol:
        return ("pvc", vol["persistentVolumeClaim"]["claimName"], rest)
    if "emptyDir" in vol:
        return ("emptyDir", vol["name"], rest)
    if "hostPath" in vol:
        return ("hostPath", vol["hostPath"]["path"], rest)
    return ("other", vol["name"], rest)


HELP_CACHE = {}


def kvblock_help(kvblock, *subcommands):
    """(returncode, text) of `kvblock <subcommands> --help`."""
    key = (kvblock,) + subcommands
    if key not in HELP_CACHE:
        out = run([kvblock, *subcommands, "--help"], timeout=60)
        HELP_CACHE[key] = (out.returncode, out.stdout + out.stderr)
    return HELP_CACHE[key]


def subcommands(kvblock):
    rc, text = kvblock_help(kvblock)
    if rc != 0:
        raise AssertionError("kvblock --help failed: " + text)
    m = re.search(r"(?i)subcommands:\n(.*)", text, re.S)
    if not m:
        raise AssertionError("kvblock --help lists no subcommands:\n" + text)
    return set(re.findall(r"^\s+([a-z][a-z0-9-]*)\s", m.group(1), re.M))


def flags_of(kvblock, *sub):
    rc, text = kvblock_help(kvblock, *sub)
    if rc != 0:
        raise AssertionError("kvblock %s --help failed: %s" % (" ".join(sub), text))
    return set(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", text))


def flag_name(arg):
    """'--foo=bar' -> 'foo'; '--foo' -> 'foo'; other -> None."""
    if not arg.startswith("--"):
        return None
    return arg[2:].split("=", 1)[0]


def flag_value(args, name):
    for a in args:
        if a.startswith("--" + name + "="):
            return a.split("=", 1)[1]
    return None


def parse_conf(text):
    """A CLI11 config file (TOML subset: `key = value`) as a dict of strings."""
    import tomllib
    data = tomllib.loads(text)
    return {k: (str(v) if not isinstance(v, list) else ",".join(map(str, v))) for k, v in data.items()}


SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
              "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40,
              "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40,
              "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4}


def parse_bytes(text):
    """'6GiB' (kvblock flags, 1024-based as CLI11::AsSizeValue(false)) or '8Gi' (Kubernetes)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in SIZE_UNITS:
        raise AssertionError("not a size: %r" % text)
    unit = m.group(2)
    if unit in ("k", "M", "G", "T"):  # Kubernetes decimal suffixes
        factor = {"k": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4}[unit]
    else:
        factor = SIZE_UNITS[unit.lower()]
    return int(float(m.group(1)) * factor)


# PromQL: metric names in expressions. kvblock's own metrics all start with kvblock_; recording
# rule names contain colons and are excluded by the look-arounds.
_METRIC_RE = re.compile(r"(?<![\w:])(kvblock_[a-z0-9_]+|up)(?![\w:])\s*(\{[^}]*\})?")
_JOB_RE = re.compile(r'job\s*=\s*"([^"]+)"')


def metric_refs(expr):
    """[(metric name, job or None)] referenced by a PromQL expression. Label names and
    function names are not metric names: a name followed by `=`/`!=`/`=~` inside braces, or
    by `(`, is skipped."""
    refs = []
    for m in _METRIC_RE.finditer(expr):
        name, selector = m.group(1), m.group(2)
        after = expr[m.end(1):m.end(1) + 3].lstrip()
        if after.startswith(("=", "!=", "=~", "!~", "(")):
            continue
        # Inside a selector's braces (a label name such as `kvblock_foo="x"`)?
        before = expr[:m.start(1)]
        if before.count("{") > before.count("}"):
            continue
        job = None
        if selector:
            j = _JOB_RE.search(selector)
            if j:
                job = j.group(1)
        refs.append((name, job))
    return refs


def dashboard_exprs():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    exprs.append((p.get("title", ""), t["expr"]))
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    return dash, exprs


def grafana_to_promql(expr):
    """Replaces Grafana's variables with values Prometheus accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "1h")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def scraped_families(text):
    """Metric family names in Prometheus text: from # TYPE lines and from sample names (with
    _bucket/_sum/_count folded into their histogram)."""
    names = set()
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind
            names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    for name, kind in types.items():
        if kind in ("histogram", "summary"):
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names, types


def read(path):
    with open(path) as f:
        return f.read()
