"""Tests of scripts/changed_services.py against this workspace's real manifests."""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import changed_services as cs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
ALL = sorted(["provisioner-job", "oc-sync-job", "generic-consumer", "devops-api", "gandalf-aggregator", "gandalf-cluster"])


def affected(*files):
    return cs.affected(ROOT, list(files))


class ChangedServices(unittest.TestCase):
    def test_a_service_directory_rebuilds_that_service_only(self):
        self.assertEqual(affected("services/devops-api/src/main.rs"), (["devops-api"], []))

    def test_the_shared_inputs_rebuild_everything(self):
        for path in ("Cargo.lock", "Dockerfile", "rust-toolchain.toml", "libs/platform/src/ops.rs"):
            self.assertEqual(affected(path)[0], ALL, path)

    def test_a_library_rebuilds_its_dependents_transitively(self):
        self.assertEqual(affected("libs/gandalf/src/frame.rs")[0], ["gandalf-aggregator", "gandalf-cluster"])
        # libs/contracts compiles proto/, and libs/gandalf depends on it.
        self.assertEqual(affected("proto/gandalf/v1/gandalf.proto")[0],
                         ["gandalf-aggregator", "gandalf-cluster", "generic-consumer"])

    def test_a_test_only_dependency_does_not_rebuild(self):
        # gandalf-aggregator's tests start a gandalf-cluster; its image does not hold one.
        self.assertEqual(affected("services/gandalf-cluster/src/lib.rs")[0], ["gandalf-cluster"])

    def test_only_contracts_changed_names_the_domains(self):
        rebuilt, domains = affected("proto/contracts/payments/payment_events_v2.proto",
                                    "proto/contracts/delivery/delivery_events_v10.proto")
        self.assertIn("generic-consumer", rebuilt)
        self.assertEqual(domains, ["DELIVERY", "PAYMENTS"])

    def test_consumer_code_changed_means_the_shared_tag(self):
        rebuilt, domains = affected("proto/contracts/payments/payment_events_v2.proto",
                                    "services/generic-consumer/src/run.rs")
        self.assertIn("generic-consumer", rebuilt)
        self.assertEqual(domains, [])
        # The shared options file is no domain's: every instance rolls.
        self.assertEqual(affected("proto/contracts/options.proto")[1], [])

    def test_docs_and_charts_rebuild_nothing(self):
        self.assertEqual(affected("docs/deploy.md", "charts/platform/values-staging.yaml", "README.md"), ([], []))

    def test_no_base_commit_rebuilds_everything(self):
        self.assertEqual(cs.affected(ROOT, None), (ALL, []))
        self.assertIsNone(cs.changed_files("0" * 40, "HEAD"))

    def test_requested_services_are_validated(self):
        import contextlib
        import io
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            self.assertEqual(cs.main(["--requested", "devops-api, gandalf-cluster"], root=ROOT), 0)
            self.assertEqual(cs.main(["--requested", "devops-api,nope"], root=ROOT), 1)
        self.assertIn('services=["devops-api", "gandalf-cluster"]', out.getvalue())
        self.assertIn("unknown services ['nope']", err.getvalue())


if __name__ == "__main__":
    unittest.main()
