"""``python -m studies <study> --out DIR [--quick] ...``: :func:`cgh_jax.study_cli.main`."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from cgh_jax import study_cli  # noqa: E402
from studies import STUDIES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return study_cli.main("studies", STUDIES, argv)


if __name__ == "__main__":
    sys.exit(main())
