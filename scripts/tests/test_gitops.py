"""Tests of scripts/gitops.py on a scratch copy of the umbrella's values files and the
contracts: `python -m unittest discover -s scripts/tests` (make test runs them)."""

import contextlib
import io
import shutil
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gitops  # noqa: E402

REPO = Path(__file__).resolve().parent.parent.parent

SHIPPING_PROTO = """syntax = "proto3";
package contracts.shipping;
message ShipmentSentEvent { string id = 1; }
message ShippingEventsV1Topic { oneof event { ShipmentSentEvent shipment_sent = 1; } }
"""


class GitOps(unittest.TestCase):
    def setUp(self):
        self.root = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.root)
        shutil.copytree(REPO / "charts" / "platform", self.root / "charts" / "platform",
                        ignore=shutil.ignore_patterns("charts", "Chart.lock"))
        shutil.copytree(REPO / "proto", self.root / "proto")
        self.production = self.root / "charts" / "platform" / "values-production.yaml"

    def run_gitops(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = gitops.main(list(argv), root=self.root)
        return code, out.getvalue(), err.getvalue()

    def values(self):
        return gitops.yaml_rt().load(self.production.read_text())

    def consumers(self):
        return {c["domain"]: c for c in self.values()["generic-consumer"]["consumers"]}

    def test_code_change_bumps_the_shared_tag_and_no_instance_pin(self):
        before = self.consumers()
        code, out, err = self.run_gitops("set-tag", "production", "generic-consumer", "4f1c2a9")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.values()["generic-consumer"]["image"]["tag"], "4f1c2a9")
        self.assertEqual(self.consumers(), before)
        self.assertIn("generic-consumer image.tag", out)
        # Comments and order are kept.
        text = self.production.read_text()
        self.assertIn("# The shared consumer tag (deploy workflow, case 1: every instance rolls).", text)
        self.assertLess(text.index("provisioner-job:"), text.index("generic-consumer:"))

    def test_contract_change_pins_only_the_named_domains(self):
        code, _, err = self.run_gitops("set-consumer-tags", "production", "b7e0d13", "payments")
        self.assertEqual(code, 0, err)
        consumers = self.consumers()
        self.assertEqual(consumers["PAYMENTS"]["imageTag"], "b7e0d13")
        self.assertNotIn("imageTag", consumers["DELIVERY"])
        self.assertEqual(self.values()["generic-consumer"]["image"]["tag"], "")

    def test_a_new_domain_is_added_from_its_contract(self):
        (self.root / "proto" / "contracts" / "shipping").mkdir()
        (self.root / "proto" / "contracts" / "shipping" / "shipping_events_v1.proto").write_text(SHIPPING_PROTO)
        code, out, err = self.run_gitops("set-consumer-tags", "production", "c0ffee1", "SHIPPING,DELIVERY")
        self.assertEqual(code, 0, err)
        consumers = self.consumers()
        shipping = consumers["SHIPPING"]
        self.assertEqual(shipping["importPath"], "contracts.shipping.shipping_events_v1")
        self.assertEqual(shipping["importObject"], "ShippingEventsV1Topic")
        self.assertEqual(shipping["consumeEnv"], "prod")
        self.assertEqual(shipping["imageTag"], "c0ffee1")
        self.assertEqual(consumers["DELIVERY"]["imageTag"], "c0ffee1")
        self.assertNotIn("imageTag", consumers["PAYMENTS"])
        self.assertIn("consumer SHIPPING added", out)

    def test_an_unknown_domain_is_refused_and_the_file_untouched(self):
        before = self.production.read_bytes()
        code, out, err = self.run_gitops("set-consumer-tags", "production", "c0ffee1", "DELIVERY", "NOSUCH")
        self.assertEqual(code, 1)
        self.assertIn("unknown domain NOSUCH", err)
        self.assertIn("nothing written", err)
        self.assertEqual(self.production.read_bytes(), before)
        self.assertEqual(out, "")

    def test_a_second_run_changes_nothing(self):
        self.assertEqual(self.run_gitops("set-consumer-tags", "production", "b7e0d13", "PAYMENTS")[0], 0)
        self.assertEqual(self.run_gitops("set-tag", "production", "devops-api", "b7e0d13")[0], 0)
        after_first = self.production.read_bytes()
        code, out, _ = self.run_gitops("set-consumer-tags", "production", "b7e0d13", "PAYMENTS")
        self.assertEqual((code, self.production.read_bytes()), (0, after_first))
        self.assertIn("unchanged", out)
        code, out, _ = self.run_gitops("set-tag", "production", "devops-api", "b7e0d13")
        self.assertEqual((code, self.production.read_bytes()), (0, after_first))
        self.assertIn("unchanged", out)

    def test_unpinning_returns_every_instance_to_the_shared_tag(self):
        self.run_gitops("set-consumer-tags", "production", "b7e0d13", "PAYMENTS", "DELIVERY")
        code, _, err = self.run_gitops("unpin-consumers", "production")
        self.assertEqual(code, 0, err)
        self.assertTrue(all("imageTag" not in c for c in self.consumers().values()))

    def test_a_service_without_a_section_gets_one(self):
        code, _, err = self.run_gitops("set-tag", "production", "gandalf-cluster", "v1.2.3")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.values()["gandalf-cluster"]["image"]["tag"], "v1.2.3")

    def test_bad_arguments_are_refused_with_nothing_written(self):
        before = self.production.read_bytes()
        for argv, message in ((("set-tag", "production", "no-such-service", "abc"), "unknown service"),
                              (("set-tag", "production", "devops-api", "bad tag;rm"), "not a valid tag"),
                              (("set-tag", "qa", "devops-api", "abc"), "no environment 'qa'"),
                              (("set-consumer-tags", "production", "abc", "bad-domain!"), "upper-case")):
            code, _, err = self.run_gitops(*argv)
            self.assertEqual(code, 1, argv)
            self.assertIn(message, err)
        self.assertEqual(self.production.read_bytes(), before)


if __name__ == "__main__":
    unittest.main()
