"""deploy_render: every overlay under deploy/k8s/overlays renders with `kubectl kustomize`, without
warnings, into the objects a kvblock cluster needs, and every built-in object validates strictly
against the Kubernetes OpenAPI schemas (PyPI kubernetes-validate) of the oldest and newest
Kubernetes versions we support. The Prometheus operator's objects (no schema there) are checked
by deploy_consistency.

Exit 77 (skipped) only when kubectl with a recent kustomize is missing."""
import sys
import unittest

import deploy_common as dc

KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
CRD_GROUPS = ("monitoring.coreos.com/",)
REQUIRED = {
    ("StatefulSet", "kvblock-cache"), ("Service", "kvblock-cache"),
    ("PodDisruptionBudget", "kvblock-cache"), ("NetworkPolicy", "kvblock-cache"),
    ("Deployment", "kvblock-worker"), ("Service", "kvblock-worker"),
    ("Service", "kvblock-worker-pods"), ("PodDisruptionBudget", "kvblock-worker"),
    ("Job", "kvblock-indexer"), ("ServiceMonitor", "kvblock-cache"),
    ("ServiceMonitor", "kvblock-worker"), ("PrometheusRule", "kvblock"),
    ("ServiceAccount", "kvblock"), ("PersistentVolumeClaim", "kvblock-models"),
    ("PersistentVolumeClaim", "kvblock-corpus"),
}


class RenderTest(unittest.TestCase):
    kubectl = None

    def test_overlays_exist(self):
        self.assertTrue({"dev", "prod"} <= set(dc.overlays()), dc.overlays())

    def test_every_overlay_renders_and_validates(self):
        import kubernetes_validate
        for overlay in dc.overlays():
            with self.subTest(overlay=overlay):
                objs, stderr = dc.render(self.kubectl, overlay)
                # Deprecated kustomize fields print warnings; the manifests use none.
                self.assertEqual(stderr.strip(), "", "kustomize warnings for %s" % overlay)
                present = {(o["kind"], o["metadata"]["name"]) for o in objs}
                self.assertEqual(REQUIRED - present, set(), overlay)
                namespaces = {o["metadata"].get("namespace") for o in objs}
                self.assertEqual(len(namespaces), 1, "one namespace per overlay: %s" % namespaces)
                self.assertNotIn(None, namespaces)
                names = [(o["kind"], o["metadata"]["name"]) for o in objs]
                self.assertEqual(len(names), len(set(names)), "duplicate objects")
                validated = 0
                for obj in objs:
                    if obj["apiVersion"].startswith(CRD_GROUPS):
                        continue
                    for version in KUBERNETES_VERSIONS:
                        try:
                            kubernetes_validate.validate(obj, version, strict=True)
                        except kubernetes_validate.ValidationError as e:
                            self.fail("%s %s/%s does not validate against Kubernetes %s: %s at %s"
                                      % (overlay, obj["kind"], obj["metadata"]["name"], version,
                                         e.message, "/".join(map(str, e.path))))
                    validated += 1
                print("%s: %d objects, %d validated against Kubernetes %s" % (
                    overlay, len(objs), validated, " and ".join(KUBERNETES_VERSIONS)))
                self.assertGreaterEqual(validated, 15)

    def test_validator_rejects_a_broken_object(self):
        # The schema check is live: a misspelt field and a wrong type are both caught.
        import kubernetes_validate
        objs, _ = dc.render(self.kubectl, "dev")
        sts = dict(dc.one(objs, "StatefulSet", "kvblock-cache"))
        bad = {**sts, "spec": {**sts["spec"], "replica": 2}}
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)
        bad = {**sts, "spec": {**sts["spec"], "replicas": "two"}}
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


if __name__ == "__main__":
    RenderTest.kubectl = dc.kubectl_or_skip()
    result = unittest.main(argv=[sys.argv[0], "-v"], exit=False).result
    sys.exit(0 if result.wasSuccessful() else 1)
