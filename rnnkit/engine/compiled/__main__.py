"""``python -m rnnkit.engine.compiled build``: build the C++ kernels now, not on first use.

The Makefile runs it after installing (``make test``), so a fresh clone's first compiled
recurrence loads a built extension instead of waiting minutes for a compile. Any other
install builds on first use (one line on stderr says so while it runs).

Commands:

``build``   build (or find in the cache) the extension for this CPU; prints where it lives
            and how long it took. Exit status 0 when the kernels are ready, or when this
            machine cannot have them (no C++ compiler, no ninja, ``RNNKIT_DISABLE_COMPILED``:
            rnnkit then runs those cells on the eager loop, and the line says so); 1 when a
            build with a toolchain present failed.
``where``   print the cache directory (``$RNNKIT_EXTENSIONS_DIR`` or
            ``~/.cache/rnnkit/extensions``) and the capability the build targets.
"""

from __future__ import annotations

import argparse
import sys
import time

#: reasons for which a machine cannot have the kernels (not a failure of the build)
_NO_TOOLCHAIN = ("no C++ compiler", "ninja not found", "disabled by RNNKIT_DISABLE_COMPILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rnnkit.engine.compiled",
        description="Build rnnkit's C++ recurrence kernels for this CPU ahead of first use.",
    )
    parser.add_argument("command", choices=("build", "where"))
    args = parser.parse_args(argv)

    from rnnkit.engine.compiled import _build

    capability = _build.capabilities()[0]
    if args.command == "where":
        print(f"{_build.cache_root()} (this CPU builds for {capability})")
        return 0
    start = time.perf_counter()
    module, error = _build.load(announce=False)
    seconds = time.perf_counter() - start
    if module is None:
        if any(text in str(error) for text in _NO_TOOLCHAIN):
            print(f"rnnkit: compiled kernels not built: {error}; rnnkit runs those cells on "
                  f"the eager loop (correct, slower)")
            return 0
        print(f"rnnkit: building the compiled kernels failed: {error}", file=sys.stderr)
        return 1
    print(f"rnnkit: compiled kernels ready for {module.rnnkit_capability} in "
          f"{module.rnnkit_build_dir} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
