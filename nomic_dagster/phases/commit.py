"""COMMIT: record the verified tree on the cycle branch, and optionally fast-forward the base.

The commit is made from the worktree's index only after checking that the index is still
exactly the tree VERIFY checked. The user's checkout is never touched unless `auto_merge`
is on, the base branch has not moved since the cycle started, and that checkout is clean.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import git as gitpython

from nomic_dagster.core.errors import NomicError
from nomic_dagster.core.records import (
    ChangeSet,
    CommitResult,
    DebateResult,
    Design,
    VerificationReport,
    Workspace,
)
from nomic_dagster.infra.git import NOMIC_AUTHOR, git
from nomic_dagster.phases.verify import summarize_tests

SUBJECT_MAX = 72
BODY_WIDTH = 72
_ZERO = "0" * 40
_NO_HOOKS = ("-c", "core.hooksPath=/dev/null")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _safe_body(text: str) -> str:
    """Free text for the body: no line git would take for the start of a patch ("---")."""
    lines = str(text).strip().splitlines()
    return "\n".join(" " + ln if re.match(r"---(\s|$)", ln) else ln.rstrip() for ln in lines)


def _prose(text: str) -> str:
    """A body paragraph wrapped at 72 columns, as `git log` readers expect."""
    return _safe_body(
        textwrap.fill(
            " ".join(text.split()), BODY_WIDTH, break_long_words=False, break_on_hyphens=False
        )
    )


def _subject(kind: str, title: str) -> str:
    subject = f"nomic({_one_line(kind) or 'change'}): {_one_line(title) or 'improvement'}"
    if len(subject) > SUBJECT_MAX:
        cut = subject[: SUBJECT_MAX - 3]
        # end on a whole word: "...untested functions..." rather than "...untested functio..."
        if " " in cut[len(kind) + 9 :]:
            cut = cut.rsplit(" ", 1)[0]
        subject = cut.rstrip(" ,;:-(") + "..."
    return subject


def commit_message(
    design: Design,
    changeset: ChangeSet,
    debate: DebateResult | None,
    cycle_id: str,
    track: str,
    agents: list[str],
    run_id: str | None,
    verification: VerificationReport | None,
    designer: str | None = None,
    implementer: str | None = None,
) -> str:
    """Subject, a body saying what improved and why, then the Nomic-* git trailers.

    `Nomic-Winner` is the agent whose proposal won; `Nomic-Designer` / `Nomic-Implementer`
    are added only when another agent designed or implemented it (the roles' settings)."""
    winner = debate.winner.agent if debate is not None and debate.winner else design.agent
    paragraphs: list[str] = [_subject(design.kind, design.title)]
    if design.rationale.strip():
        paragraphs.append(_prose(design.rationale))
    if changeset.summary.strip():
        paragraphs.append(_prose("Implementation: " + changeset.summary))

    files = [f"Changed files (+{changeset.lines_added}/-{changeset.lines_removed}):"]
    for f in changeset.files:
        moved = f" (from {f.old_path})" if f.old_path else ""
        files.append(f"- {f.path}{moved}: {f.status}, +{f.added}/-{f.removed}")
    paragraphs.append("\n".join(files))

    decision = [f"Proposal {design.proposal_id} by {winner}, {design.risk} risk."]
    if debate is not None:
        c = debate.consensus
        tally = ", ".join(f"{pid} {n}" for pid, n in sorted(c.tally.items(), key=lambda kv: -kv[1]))
        decision.append(
            f"Votes: {tally or 'none'} ({c.votes_for_winner} of {c.voters} voters for the "
            f"winner, rule {c.rule.value})."
        )
        if c.changed_by_debate:
            decision.append(
                f"The debate changed the winner: the vote-only round favoured "
                f"{c.first_round_winner_id or 'no proposal'}."
            )
        elif c.first_round_winner_id:
            decision.append("The debate confirmed the vote-only winner.")
        decision.append(
            f"{len(debate.proposals)} proposal(s), {len(debate.critiques)} critique(s)."
        )
    paragraphs.append(_prose(" ".join(decision)))

    if verification is not None:
        gates = verification.gates
        ok = sum(g.passed for g in gates)
        checks = f"Verification: {ok}/{len(gates)} gates passed"
        if verification.tests is not None and verification.tests.passed is not None:
            checks += (
                f"; tests: {summarize_tests(verification.tests)} ({verification.tests.command})"
            )
        paragraphs.append(_prose(checks + "."))

    trailers = [
        ("Nomic-Cycle", cycle_id),
        ("Nomic-Track", track),
        ("Nomic-Agents", ", ".join(agents) or "none"),
        ("Nomic-Run-Id", run_id or "none"),
        ("Nomic-Winner", winner),
    ]
    trailers += [
        (k, v)
        for k, v in (("Nomic-Designer", designer), ("Nomic-Implementer", implementer))
        if v and v != winner
    ]
    paragraphs.append("\n".join(f"{k}: {_one_line(v) or 'none'}" for k, v in trailers))
    return "\n\n".join(paragraphs) + "\n"


def commit_change(
    workspace: Workspace, changeset: ChangeSet, message: str, auto_merge: bool
) -> CommitResult:
    """Commit the verified index on the cycle branch; fast-forward the base only if asked and safe.

    Idempotent: when the branch tip already is this cycle's commit of exactly the verified
    tree (a COMMIT that was killed after it landed, then resumed), that commit is adopted.
    """
    repo = gitpython.Repo(workspace.worktree)
    try:
        adopted = _commit_of_this_cycle(repo, workspace, changeset)
        if adopted is not None:
            return _finish(workspace, adopted.hexsha, str(adopted.message), auto_merge)
        staged = repo.git.write_tree()
        if staged != changeset.tree_sha:
            raise NomicError(
                f"index changed after verification: staged tree {staged[:12]} is not the "
                f"verified {changeset.tree_sha[:12]}; nothing was committed"
            )
        if changeset.base_sha != workspace.base_sha:
            raise NomicError(
                f"the change set's base {changeset.base_sha[:12]} is not the workspace's "
                f"base {workspace.base_sha[:12]}"
            )
        actor = gitpython.Actor(*NOMIC_AUTHOR)
        commit = gitpython.Commit.create_from_tree(
            repo,
            repo.tree(changeset.tree_sha),
            message,
            parent_commits=[repo.commit(workspace.base_sha)],
            head=False,
            author=actor,
            committer=actor,
        )
        sha = commit.hexsha
        ref = f"refs/heads/{workspace.branch}"
        exists = _ref_sha(Path(workspace.worktree), ref) is not None
        try:
            # Compare-and-swap: the cycle branch must still be at the base (or not exist yet).
            repo.git.update_ref(
                "-m",
                f"nomic: cycle {workspace.cycle_id}",
                ref,
                sha,
                workspace.base_sha if exists else _ZERO,
            )
        except gitpython.GitCommandError as exc:
            raise NomicError(
                f"branch {workspace.branch} moved while the cycle ran; commit {sha[:12]} was not "
                f"recorded on it: {exc.stderr.strip()}"
            ) from exc
    finally:
        repo.close()
    return _finish(workspace, sha, message, auto_merge)


def _finish(workspace: Workspace, sha: str, message: str, auto_merge: bool) -> CommitResult:
    merged, note = False, "auto-merge is off: the branch is left for review"
    if auto_merge:
        base = _ref_sha(Path(workspace.source_repo), f"refs/heads/{workspace.base_branch}")
        if base == sha:
            merged, note = True, f"{workspace.base_branch} is already at {sha[:12]}"
        else:
            merged, note = _fast_forward_base(workspace, sha)
    return CommitResult(
        sha=sha, branch=workspace.branch, message=message, merged=merged, merge_note=note
    )


def _commit_of_this_cycle(
    repo: gitpython.Repo, workspace: Workspace, changeset: ChangeSet
) -> gitpython.Commit | None:
    """The branch tip, when it is this cycle's commit of the verified tree on the base."""
    tip = _ref_sha(Path(workspace.worktree), f"refs/heads/{workspace.branch}")
    if tip is None or tip == workspace.base_sha:
        return None
    commit = repo.commit(tip)
    trailer = re.search(r"^Nomic-Cycle: *(\S+) *$", str(commit.message), re.MULTILINE)
    if (
        trailer is None
        or trailer.group(1) != workspace.cycle_id
        or commit.tree.hexsha != changeset.tree_sha
        or [p.hexsha for p in commit.parents] != [workspace.base_sha]
    ):
        return None
    return commit


# ---------------------------------------------------------------- auto-merge


def _ref_sha(repo: Path, ref: str) -> str | None:
    out = git(repo, "rev-parse", "--verify", "--quiet", ref + "^{commit}", check=False).strip()
    return out or None


def _checkouts_of(root: Path, branch_ref: str) -> list[Path]:
    """Worktrees of `root` (the main checkout included) that have `branch_ref` checked out."""
    paths: list[Path] = []
    current: str | None = None
    for line in git(root, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            current = line.removeprefix("worktree ")
        elif line == f"branch {branch_ref}" and current is not None:
            paths.append(Path(current))
    return paths


def _fast_forward_base(ws: Workspace, new_sha: str) -> tuple[bool, str]:
    root = Path(ws.source_repo)
    base_ref = f"refs/heads/{ws.base_branch}"
    current = _ref_sha(root, base_ref)
    if current != ws.base_sha:
        return False, (
            f"not merged: {ws.base_branch} moved since the cycle started "
            f"({ws.base_sha[:12]} -> {(current or 'deleted')[:12]}); {ws.branch} is left for review"
        )
    checkouts = _checkouts_of(root, base_ref)
    for checkout in checkouts:
        if not checkout.is_dir():
            return False, (
                f"not merged: {ws.base_branch} is checked out at {checkout}, which is missing; "
                f"{ws.branch} is left for review"
            )
        try:
            # --no-optional-locks: looking must not rewrite that checkout's index
            dirty = git(checkout, "--no-optional-locks", "status", "--porcelain")
        except subprocess.CalledProcessError as exc:
            return False, f"not merged: cannot read the status of {checkout}: {exc.stderr.strip()}"
        if dirty.strip():
            return False, (
                f"not merged: the checkout of {ws.base_branch} at {checkout} has uncommitted "
                f"changes; {ws.branch} is left for review"
            )
    if checkouts:
        checkout = checkouts[0]
        try:
            git(checkout, *_NO_HOOKS, "merge", "--ff-only", "--quiet", new_sha)
        except subprocess.CalledProcessError as exc:
            return (
                False,
                f"not merged: git merge --ff-only failed in {checkout}: {exc.stderr.strip()}",
            )
        if _ref_sha(root, base_ref) != new_sha:
            return False, f"not merged: {ws.base_branch} did not reach {new_sha[:12]}"
        return True, f"fast-forwarded {ws.base_branch} to {new_sha[:12]} in {checkout}"
    try:
        git(
            root,
            "update-ref",
            "-m",
            f"nomic: fast-forward to cycle {ws.cycle_id}",
            base_ref,
            new_sha,
            ws.base_sha,
        )
    except subprocess.CalledProcessError as exc:
        return False, f"not merged: {ws.base_branch} moved while merging: {exc.stderr.strip()}"
    return True, f"fast-forwarded {ws.base_branch} to {new_sha[:12]}"
