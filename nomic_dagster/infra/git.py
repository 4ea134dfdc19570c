"""The cycle's isolated workspace: target resolution, validation, worktree, change set.

A cycle never touches the user's checkout, index, uncommitted files or branches: it adds
a git worktree outside the checkout, detached at the base branch's HEAD, and works only
there. The only thing it leaves in the user's repository is the cycle branch
`nomic/<track>/<cycle_id>` (and only when a commit landed on it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from enum import StrEnum
from pathlib import Path

from nomic_dagster.core import pathrules
from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.records import ChangeSet, FileChange, Track, Workspace
from nomic_dagster.core.settings import CycleSettings, state_dir

DEMO_REPO = Path(__file__).resolve().parents[2] / "examples" / "demo_repo"
NOMIC_AUTHOR = ("nomic-dagster", "nomic-dagster@users.noreply.localhost")
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@[^:]+:)", re.IGNORECASE)
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def git(repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    """Run git in `repo` with hooks and user config that could prompt disabled."""
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(env or {})}
    res = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )
    if check and res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, ["git", *args], res.stdout, res.stderr)
    return res.stdout


def _git_ok(repo: Path, *args: str) -> bool:
    try:
        git(repo, *args)
        return True
    except subprocess.CalledProcessError:
        return False


def commit_env() -> dict[str, str]:
    name, email = NOMIC_AUTHOR
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


# ---------------------------------------------------------------- target


def is_url(target: str) -> bool:
    return bool(_URL.match(target))


def materialize_demo(dest: Path) -> Path:
    """Copy the bundled demo repository to `dest` and make it a git repository."""
    if not DEMO_REPO.is_dir():
        raise BadInput(
            f"the bundled demo repository is missing ({DEMO_REPO})",
            "install nomic_dagster from a checkout (pip install -e .) or set `repo`",
        )
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(DEMO_REPO, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    git(dest, "init", "--quiet", "--initial-branch=main")
    git(dest, "add", "-A")
    git(dest, "commit", "--quiet", "-m", "demo: initial import", env=commit_env())
    return dest


def _clone(url: str, clones: Path) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", url.rstrip("/").removesuffix(".git"))[-80:]
    dest = clones / slug
    try:
        if (dest / ".git").exists():
            git(
                dest, "fetch", "--quiet", "--prune", "origin", "+refs/heads/*:refs/remotes/origin/*"
            )
        else:
            clones.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["git", "clone", "--quiet", "--no-checkout", url, str(dest)],
                check=True,
                capture_output=True,
                text=True,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            )
    except subprocess.CalledProcessError as exc:
        raise BadInput(
            f"cannot clone {url!r}: {(exc.stderr or '').strip()[:300]}",
            "check the URL and that this machine can reach it, or clone it yourself and pass the path",
        ) from exc
    return dest


DEMO_TARGET = "demo"
REPO_ENV = "NOMIC_REPO"


class WhenUnset(StrEnum):
    """What an entry point targets when neither it nor $NOMIC_REPO names a repository."""

    # `nomic run`, the scripts, the state machine, NomicLoop: a person runs them inside
    # the repository to improve.
    CURRENT_REPO = "current_repo"
    # The Dagster jobs, schedules and sensors: `make demo` must work from a fresh clone
    # (whose own checkout is not the thing to improve).
    DEMO = "demo"


def current_repository(cwd: str | os.PathLike[str] | None = None) -> str:
    """The top level of the git repository containing `cwd` (default: the current
    directory), or BadInput naming the two ways to name a target."""
    here = Path(cwd or os.getcwd()).expanduser().resolve()
    res = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        cwd=here,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    top = res.stdout.strip()
    if res.returncode != 0 or not top:
        raise BadInput(
            f"no repository was named and the current directory {str(here)!r} is not inside "
            "a git repository",
            f"pass --repo PATH (repo=PATH from Python) or set {REPO_ENV}, or run from inside "
            "the repository to improve; --repo demo runs on the bundled demo",
        )
    return str(Path(top).resolve())


def choose_target(
    repo: str | os.PathLike[str] | None,
    *,
    when_unset: WhenUnset = WhenUnset.CURRENT_REPO,
    cwd: str | os.PathLike[str] | None = None,
) -> str:
    """The one rule for a cycle's target, called by every entry point.

    `repo` (the option, run config or argument) if given, else $NOMIC_REPO, else
    `when_unset`: the git repository containing `cwd` (BadInput if there is none) or the
    bundled demo. "demo" and URLs are kept as written; a local path comes back absolute
    (resolved against `cwd`, default the current directory), so a relative `--repo .`
    means the folder the command was started in wherever the cycle later runs.
    """
    named = os.fspath(repo).strip() if repo is not None else ""
    if not named:
        named = os.environ.get(REPO_ENV, "").strip()
    if not named:
        if when_unset is WhenUnset.DEMO:
            return DEMO_TARGET
        return current_repository(cwd)
    if named == DEMO_TARGET or is_url(named):
        return named
    path = Path(named).expanduser()
    if not path.is_absolute():
        path = Path(cwd or os.getcwd()).expanduser() / path
    return str(path.resolve())


def resolve_target(settings: CycleSettings, cycle_id: str) -> tuple[str, Path]:
    """(origin, repository path) by `choose_target`; an entry point that left `repo`
    empty (the Dagster run config) gets $NOMIC_REPO, else a fresh copy of the demo."""
    target = choose_target(settings.repo, when_unset=WhenUnset.DEMO)
    state = state_dir(settings)
    if target == DEMO_TARGET:
        return DEMO_TARGET, materialize_demo(state / "demo" / cycle_id)
    if is_url(target):
        return target, _clone(target, state / "clones")
    path = Path(target)
    if not path.exists():
        raise BadInput(
            f"repository path {str(path)!r} does not exist", "set `repo` to a git checkout"
        )
    if not path.is_dir():
        raise BadInput(
            f"repository path {str(path)!r} is not a folder", "set `repo` to a git checkout"
        )
    return target, path


def _remote_branch_sha(repo: Path, branch: str) -> str | None:
    for ref in (f"refs/remotes/origin/{branch}",):
        if _git_ok(repo, "rev-parse", "--verify", "--quiet", ref + "^{commit}"):
            return git(repo, "rev-parse", ref + "^{commit}").strip()
    return None


def validate_repo(path: Path, base_branch: str | None, origin: str) -> tuple[Path, str, str]:
    """(repository root, base branch, base sha) or BadInput naming the problem and the fix."""
    try:
        inside = git(path, "rev-parse", "--is-inside-work-tree", check=False).strip()
        git_dir = git(path, "rev-parse", "--git-dir").strip()
    except subprocess.CalledProcessError:
        raise BadInput(
            f"{str(path)!r} is not a git repository",
            f"run `git init && git add -A && git commit -m init` in {path}, or point `repo` at a git checkout",
        ) from None
    root = Path(git(path, "rev-parse", "--show-toplevel").strip()) if inside == "true" else path
    if not Path(git_dir).is_absolute():
        git_dir = str((path / git_dir).resolve())
    if not _git_ok(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}") and not is_url(
        origin
    ):
        raise BadInput(
            f"repository {str(root)!r} has no commits",
            "commit the current state first (git add -A && git commit -m init)",
        )
    if base_branch is None:
        if is_url(origin):
            head = git(
                root, "symbolic-ref", "--short", "-q", "refs/remotes/origin/HEAD", check=False
            ).strip()
            base_branch = head.removeprefix("origin/") or "main"
        else:
            head = git(root, "symbolic-ref", "--short", "-q", "HEAD", check=False).strip()
            if not head:
                raise BadInput(
                    f"HEAD of {str(root)!r} is detached, so there is no branch to start from",
                    "check out a branch in the repository, or set `base_branch`",
                )
            base_branch = head
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", base_branch) or ".." in base_branch:
        raise BadInput(
            f"base branch {base_branch!r} is not a valid branch name", "name an existing branch"
        )
    ref = f"refs/heads/{base_branch}"
    if _git_ok(root, "rev-parse", "--verify", "--quiet", ref + "^{commit}"):
        sha = git(root, "rev-parse", ref + "^{commit}").strip()
    elif is_url(origin) and (remote := _remote_branch_sha(root, base_branch)):
        git(root, "branch", "--quiet", "--force", base_branch, remote)
        sha = remote
    else:
        branches = git(root, "for-each-ref", "--format=%(refname:short)", "refs/heads").split()
        raise BadInput(
            f"base branch {base_branch!r} does not exist in {str(root)!r}",
            f"set `base_branch` to one of: {', '.join(branches) or '(none)'}",
        )
    return root, base_branch, sha


def cycle_branch(track: Track, cycle_id: str) -> str:
    return f"nomic/{track.value}/{cycle_id}"


def open_workspace(settings: CycleSettings, cycle_id: str) -> Workspace:
    """Resolve and validate the target, then add the cycle's worktree, detached at the base."""
    if not _SAFE_ID.match(cycle_id):
        raise BadInput(
            f"cycle id {cycle_id!r} is not safe", "use letters, digits, '.', '_' and '-'"
        )
    origin, path = resolve_target(settings, cycle_id)
    root, base_branch, base_sha = validate_repo(path, settings.base_branch, origin)
    branch = cycle_branch(settings.track_enum, cycle_id)
    state = state_dir(settings)
    worktree = state / "worktrees" / cycle_id
    scratch = state / "scratch" / cycle_id
    # A run of this cycle that was killed leaves its worktree (and perhaps an empty cycle
    # branch) behind: a resumed or retried CONTEXT replaces them instead of failing.
    drop_worktree(root, worktree)
    ref = f"refs/heads/{branch}"
    if _git_ok(root, "rev-parse", "--verify", "--quiet", ref):
        tip = git(root, "rev-parse", ref).strip()
        if not _git_ok(root, "merge-base", "--is-ancestor", tip, base_sha):
            raise BadInput(
                f"branch {branch!r} already exists and holds commits that {base_branch} does not",
                "use a new cycle id, or delete the branch if you do not need it",
            )
        git(root, "update-ref", "-d", ref, tip)  # empty: nothing landed on it
    scratch.mkdir(parents=True, exist_ok=True)
    worktree.parent.mkdir(parents=True, exist_ok=True)
    git(root, "worktree", "add", "--quiet", "--detach", str(worktree), base_sha)
    return Workspace(
        cycle_id=cycle_id,
        track=settings.track_enum,
        origin=origin,
        source_repo=str(root),
        worktree=str(worktree),
        branch=branch,
        base_branch=base_branch,
        base_sha=base_sha,
        scratch_dir=str(scratch),
    )


def start_branch(ws: Workspace) -> None:
    """Create the cycle branch at the base commit and switch the worktree onto it.

    When the branch is already there at the base (a killed or retried IMPLEMENT), the
    worktree is reset onto it and cleaned, so the implementation starts from the base again.
    """
    wt = Path(ws.worktree)
    ref = f"refs/heads/{ws.branch}"
    if not _git_ok(wt, "rev-parse", "--verify", "--quiet", ref):
        git(wt, "switch", "--quiet", "-c", ws.branch, ws.base_sha)
        return
    tip = git(wt, "rev-parse", ref).strip()
    if tip != ws.base_sha:
        raise BadInput(
            f"cycle branch {ws.branch!r} already has commit {tip[:12]}, which this cycle did not verify",
            f"delete it (git branch -D {ws.branch}) or start a new cycle",
        )
    git(wt, "switch", "--quiet", "--force", "-C", ws.branch, ws.base_sha)
    git(wt, "clean", "-q", "-fdx")


def drop_worktree(root: Path, worktree: Path) -> None:
    """Remove a worktree folder and git's record of it (nothing when it is not there)."""
    if worktree.exists():
        git(root, "worktree", "remove", "--force", str(worktree), check=False)
        shutil.rmtree(worktree, ignore_errors=True)
    git(root, "worktree", "prune", check=False)


def _is_worktree_root(path: Path) -> bool:
    if not path.is_dir():
        return False
    top = git(path, "rev-parse", "--show-toplevel", check=False).strip()
    return bool(top) and Path(top).resolve() == path.resolve()


def reattach_workspace(ws: Workspace) -> None:
    """Make sure the cycle's worktree is there: a resumed cycle whose folder is gone (or is
    no longer a worktree) gets it back, detached at the base."""
    Path(ws.scratch_dir).mkdir(parents=True, exist_ok=True)
    wt = Path(ws.worktree)
    if _is_worktree_root(wt):
        return
    root = Path(ws.source_repo)
    drop_worktree(root, wt)
    wt.parent.mkdir(parents=True, exist_ok=True)
    git(root, "worktree", "add", "--quiet", "--detach", str(wt), ws.base_sha)


def reset_to_base(ws: Workspace) -> None:
    """The worktree detached and clean at the base commit (a re-run of DEBATE or DESIGN)."""
    reattach_workspace(ws)
    wt = Path(ws.worktree)
    git(wt, "checkout", "--quiet", "--force", "--detach", ws.base_sha)
    git(wt, "clean", "-q", "-fdx")


def restore_changeset(ws: Workspace, changes: ChangeSet) -> None:
    """The worktree on the cycle branch with exactly the change set's tree staged and checked
    out, nothing else (a re-run of VERIFY or COMMIT). The branch itself is not moved: a
    commit this cycle already made on it stays."""
    reattach_workspace(ws)
    wt = Path(ws.worktree)
    ref = f"refs/heads/{ws.branch}"
    head = git(wt, "symbolic-ref", "-q", "HEAD", check=False).strip()
    if not _git_ok(wt, "rev-parse", "--verify", "--quiet", ref):
        git(wt, "switch", "--quiet", "--force", "-c", ws.branch, ws.base_sha)
    elif head != ref:
        git(wt, "switch", "--quiet", "--force", ws.branch)
    git(wt, "read-tree", "--reset", "-u", changes.tree_sha)
    git(wt, "clean", "-q", "-fdx")


def close_workspace(ws: Workspace) -> None:
    """Remove the worktree and scratch folder; drop the cycle branch if nothing landed on it.

    Safe to call twice and after a partial open.
    """
    root = Path(ws.source_repo)
    drop_worktree(root, Path(ws.worktree))
    ref = f"refs/heads/{ws.branch}"
    if _git_ok(root, "rev-parse", "--verify", "--quiet", ref):
        tip = git(root, "rev-parse", ref).strip()
        if tip == ws.base_sha:
            git(root, "update-ref", "-d", ref, ws.base_sha, check=False)
    shutil.rmtree(ws.scratch_dir, ignore_errors=True)


# ---------------------------------------------------------------- change set

# git diff --name-status letters -> FileChange.status

GIT_STATUS = {
    "A": "added",
    "M": "modified",
    "D": "deleted",
    "R": "renamed",
    "T": "type_changed",
    "C": "added",
}


def collect_changes(ws: Workspace, summary: str = "") -> ChangeSet:
    """Stage everything the agent changed (minus tool junk) in the worktree's own index and
    describe it against the base commit. The staged tree is exactly what verify checks and
    commit records."""
    wt = Path(ws.worktree)
    git(wt, "add", "-A")
    staged = git(wt, "diff", "--cached", "--name-only", "-z", ws.base_sha).split("\0")
    junk = [p for p in staged if p and pathrules.is_junk(p)]
    if junk:
        git(wt, "rm", "--cached", "--quiet", "-r", "--", *junk)
    files: list[FileChange] = []
    numstat: dict[str, tuple[int, int]] = {}
    for line in git(wt, "diff", "--cached", "--numstat", "-M", ws.base_sha).splitlines():
        added, removed, path = line.split("\t", 2)
        if " => " in path:  # rename: "old => new" or "dir/{old => new}"
            path = _rename_target(path)
        numstat[path] = (int(added) if added != "-" else 0, int(removed) if removed != "-" else 0)
    entries = git(wt, "diff", "--cached", "--name-status", "-M", "-z", ws.base_sha).split("\0")
    i = 0
    while i < len(entries) and entries[i]:
        code = entries[i]
        letter = code[0]
        if letter in ("R", "C"):
            old, new = entries[i + 1], entries[i + 2]
            i += 3
        else:
            old, new = None, entries[i + 1]
            i += 2
        a, r = numstat.get(new, (0, 0))
        files.append(
            FileChange(
                path=new,
                status=GIT_STATUS.get(letter, "modified"),
                added=a,
                removed=r,
                old_path=old,
            )  # type: ignore[arg-type]
        )
    diff = git(wt, "diff", "--cached", "-M", ws.base_sha)
    tree = git(wt, "write-tree").strip()
    return ChangeSet(
        branch=ws.branch,
        base_sha=ws.base_sha,
        tree_sha=tree,
        diff=diff,
        files=files,
        lines_added=sum(f.added for f in files),
        lines_removed=sum(f.removed for f in files),
        summary=summary,
    )


def _rename_target(path: str) -> str:
    if "{" in path:
        pre, rest = path.split("{", 1)
        inner, post = rest.split("}", 1)
        return (pre + inner.split(" => ", 1)[1] + post).replace("//", "/")
    return path.split(" => ", 1)[1]
