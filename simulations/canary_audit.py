"""``fedseqrec-canary-audit``: empirical privacy audit of a federated run with canary users.

``python -m simulations.canary_audit --preset ml100k-dp [--canaries 200] [--set key=value ...]``

1. Makes ``--canaries`` fabricated users (random sequences of ``--canary-length``
   distinct catalogue items, seeded) and plants a random half of them in a copy of the
   preset's click log inside a new run folder (:mod:`common.privacy.canaries`).
2. Runs the real Flower simulation of the preset on that log with the launcher
   (:mod:`simulations.launch`): canaries are users like any other, so they are
   partitioned, sampled, clipped and noised like them and count in the number of users
   (and so in the default delta, 1 / (10 x users)). In cohort mode ``users-per-client``
   grows so that the preset keeps its number of cohorts (unless ``--set`` gives it).
3. Scores every canary, planted or not, by the final global model's loss on it and runs
   the loss-threshold membership test; the threshold is chosen on a held-out half of
   the canaries and Clopper-Pearson bounds on the other half give an empirical epsilon
   lower bound (:mod:`common.privacy.membership_inference`).
4. Compares it with the theoretical epsilon of the run's ledger (as the launcher's
   privacy audit recomputed it, ``audit.json``), writes ``canary_audit.json`` in the
   run folder and prints a report.

The final checkpoint is audited, not the best one: the best round is chosen on every
user's validation item outside the DP mechanism, the last round's model is exactly what
the mechanism released. Exit status: 0 when the empirical bound stays within the
theoretical epsilon (always, without DP), 1 when it exceeds it (a broken guarantee or a
bug), 2 when the audit could not run (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data.loaders import load_dataset
from common.data.sequences import build_sequences
from common.federation.checkpoints import load_checkpoint
from common.federation.config import FederatedConfig
from common.privacy.canaries import CanarySet, canary_losses, make_canaries, write_planted_log
from common.privacy.ledger_audit import SERVER
from common.privacy.membership_inference import MembershipAudit, audit_membership
from common.storage.run_folder import new_run_dir, write_json
from simulations.launch import (
    AUDIT_FILE,
    PROJECT_ROOT,
    LaunchError,
    app_defaults,
    check_inputs,
    launch_in,
    load_preset,
    parse_overrides,
    resolve_config,
    unwind_on_sigterm,
)
from simulations.superlink import SuperLinkError, add_ray_arguments

logger = logging.getLogger("fedseqrec.canary_audit")

EXCEEDED = 1
CANNOT_RUN = 2
FINAL_CHECKPOINT = "checkpoint.pt"
CANARIES_FILE = "canaries.json"
REPORT_FILE = "canary_audit.json"


@dataclass(frozen=True)
class Guarantee:
    """The run's claimed (epsilon, delta); epsilon is infinite without DP."""

    mechanism: str
    epsilon: float
    pld_epsilon: float
    delta: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; no epsilon (null) without DP."""
        finite = math.isfinite(self.epsilon)
        return {
            "mechanism": self.mechanism,
            "epsilon": self.epsilon if finite else None,
            "pld_epsilon": self.pld_epsilon if finite else None,
            "delta": self.delta,
        }


@dataclass(frozen=True)
class CanaryAudit:
    """Everything one audit did and found (``canary_audit.json``)."""

    run: Path
    preset: str
    dp: str
    real_users: int
    canaries: CanarySet
    canary_length: int
    click_log: Path
    checkpoint_round: int
    test: dict[str, float]
    guarantee: Guarantee
    membership: MembershipAudit
    losses: np.ndarray

    @property
    def exceeds(self) -> bool:
        """Whether the empirical lower bound contradicts the claimed epsilon."""
        return self.membership.epsilon_lower_bound > self.guarantee.epsilon

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary; the canaries themselves are in ``canaries.json``."""
        planted = self.canaries.planted
        return {
            "run": str(self.run),
            "preset": self.preset,
            "dp": self.dp,
            "users": {
                "real": self.real_users,
                "planted_canaries": int(planted.sum()),
                "total": self.real_users + int(planted.sum()),
            },
            "canaries": {
                "count": len(planted),
                "length": self.canary_length,
                "seed": self.canaries.seed,
                "file": str(self.run / CANARIES_FILE),
                "click_log": str(self.click_log),
            },
            "checkpoint": {
                "path": str(self.run / FINAL_CHECKPOINT),
                "round": self.checkpoint_round,
            },
            "test": self.test,
            "theoretical": self.guarantee.to_dict(),
            "empirical": self.membership.to_dict(),
            "exceeds_theoretical": self.exceeds,
            "losses": {
                "planted": self.losses[planted].tolist(),
                "unplanted": self.losses[~planted].tolist(),
            },
        }


def run_guarantee(results_dir: Path, dp: str, n_users: int) -> Guarantee:
    """The server's final guarantee from the privacy audit the launcher wrote.

    Without DP there is no guarantee; delta is then the default a DP run of the same
    users would have had, so the empirical bound is stated at a comparable delta.
    """
    if dp == "none":
        return Guarantee("none", math.inf, math.inf, 1.0 / (10 * n_users))
    report = json.loads((results_dir / AUDIT_FILE).read_text())
    server = next((party for party in report["parties"] if party["who"] == SERVER), None)
    if server is None:
        raise LaunchError(f"{results_dir / AUDIT_FILE}: no server guarantee to compare with")
    return Guarantee(
        server["mechanism"],
        float(server["epsilon"]),  # "inf" in the file for a release without noise
        float(server["pld_epsilon"]),
        float(server["delta"]),
    )


def same_cohort_count(federated: FederatedConfig, real_users: int, canaries: CanarySet) -> int:
    """Users per cohort that keep the preset's number of cohorts with the planted canaries.

    The number of cohorts is the preset's resource plan (one Ray worker each); cohorts
    add up their users' updates exactly, so it does not change what is computed.
    """
    cohorts = federated.num_partitions(real_users)
    return math.ceil((real_users + int(canaries.planted.sum())) / cohorts)


def run_audit(args: argparse.Namespace) -> CanaryAudit:
    """Plant, train, score and test (see the module docstring)."""
    if not 0.0 < args.confidence < 1.0:
        raise LaunchError(f"--confidence must be in (0, 1), got {args.confidence}")
    label, preset = load_preset(args.preset)
    overrides = parse_overrides(args.set)
    config = resolve_config(app_defaults(), preset, overrides, label)
    federated = FederatedConfig.from_run_config(config)
    if federated.dp == "local":
        raise LaunchError("the canary audit covers dp = 'user' and dp = 'none', not 'local'")
    seed = federated.seed if args.seed is None else args.seed
    log = load_dataset(federated.dataset)
    real = build_sequences(log, name=federated.dataset)
    canaries = make_canaries(real.user_ids, real.item_ids, args.canaries, args.canary_length, seed)
    results_dir = new_run_dir(args.results.resolve(), f"{label}-canary")
    click_log = write_planted_log(
        Path(federated.dataset), log, canaries, results_dir / "canary-data"
    )
    write_json(results_dir / CANARIES_FILE, canaries.to_dict())
    planted = {**overrides, "dataset": str(click_log)}
    if federated.partition_mode == "cohort" and "users-per-client" not in overrides:
        planted["users-per-client"] = same_cohort_count(federated, real.n_users, canaries)
    config = resolve_config(app_defaults(), preset, planted, label)
    n_users = check_inputs(config)
    if n_users != real.n_users + int(canaries.planted.sum()):
        raise LaunchError(f"{click_log}: {n_users} users, not the real ones plus the planted")
    summary = launch_in(
        results_dir, label, config, n_users, args.port, args.ray_address or "", args.ray_cpus or 0
    )
    checkpoint = load_checkpoint(results_dir / FINAL_CHECKPOINT)
    losses = canary_losses(checkpoint, canaries.sequences)
    guarantee = run_guarantee(results_dir, federated.dp, n_users)
    membership = audit_membership(losses, canaries.planted, guarantee.delta, args.confidence, seed)
    test = {key: summary["test"][key] for key in ("hr@10", "ndcg@10")}
    return CanaryAudit(
        results_dir, label, federated.dp, real.n_users, canaries, args.canary_length,
        click_log, checkpoint.round, test, guarantee, membership, losses,
    )  # fmt: skip


def render(audit: CanaryAudit) -> str:
    """The audit in plain words, verdict last."""
    found, held, tested = audit.membership, audit.membership.selection, audit.membership.evaluation
    planted, theory = int(audit.canaries.planted.sum()), audit.guarantee
    lines = [
        f"Canary audit of {audit.run}",
        f"{len(audit.canaries.planted)} canary users of {audit.canary_length} random items; "
        f"{planted} planted among {audit.real_users} real users "
        f"({audit.real_users + planted} users trained), the others never seen.",
        f"Membership test on the final model (round {audit.checkpoint_round}): a canary is "
        f"guessed planted when its loss is below {held.threshold:.4f}, chosen on "
        f"{held.members + held.nonmembers} canaries and tested on the other "
        f"{tested.members + tested.nonmembers}.",
        f"  Tested: {tested.true_positives} of {tested.members} planted canaries guessed "
        f"planted, {tested.false_positives} of {tested.nonmembers} unplanted; mean loss "
        f"planted {found.member_loss_mean:.3f} vs unplanted {found.nonmember_loss_mean:.3f}; "
        f"AUC over all canaries {found.auc:.3f}.",
        f"  Empirical epsilon lower bound: {found.epsilon_lower_bound:.3f} "
        f"({found.confidence:.0%} confidence, delta {found.delta:.3g}, Clopper-Pearson "
        f"bounds on {found.statement}); a perfect test on these canaries would give "
        f"{found.ceiling:.3f}, the most this audit can show.",
    ]
    if not math.isfinite(theory.epsilon):
        lines += [
            "Theoretical epsilon: none (dp = none, no guarantee). A lower bound clearly "
            "above 0 shows the test detects membership; 0 means it found no leakage here.",
        ]
        return "\n".join(lines)
    lines.append(
        f"Theoretical epsilon ({theory.mechanism}, from the audited ledger): "
        f"{theory.epsilon:.3f} (PLD {theory.pld_epsilon:.3f}), delta {theory.delta:.3g}."
    )
    verdict = "EXCEEDS" if audit.exceeds else "is within"
    lines.append(
        f"{'FAILED' if audit.exceeds else 'PASSED'}: the empirical lower bound "
        f"{found.epsilon_lower_bound:.3f} {verdict} the theoretical epsilon {theory.epsilon:.3f}."
    )
    if found.ceiling <= theory.epsilon:
        lines.append(
            f"  With {len(audit.canaries.planted)} canaries this audit cannot reach epsilon "
            f"{theory.epsilon:.3f} (ceiling {found.ceiling:.3f}): it only catches gross leaks."
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    parser = argparse.ArgumentParser(
        prog="fedseqrec-canary-audit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", required=True, help="name in simulations/presets or a .toml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--canaries", type=int, default=200, help="canary users, half planted")
    parser.add_argument("--canary-length", type=int, default=20, help="items per canary (20)")
    parser.add_argument("--confidence", type=float, default=0.95, help="of the bound (0.95)")
    parser.add_argument("--seed", type=int, help="canaries and split (default: the run's seed)")
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "results")
    parser.add_argument("--port", type=int, default=39291, help="local SuperLink HTTP port")
    add_ray_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 within the guarantee, 1 exceeded, 2 could not run."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    unwind_on_sigterm()
    args = build_parser().parse_args(argv)
    try:
        audit = run_audit(args)
    except (LaunchError, SuperLinkError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return CANNOT_RUN
    write_json(audit.run / REPORT_FILE, audit.to_dict())
    print(render(audit))
    return EXCEEDED if audit.exceeds else 0


if __name__ == "__main__":
    sys.exit(main())
