"""``python -m prunekit.cli``: the same as the ``prunekit`` console script."""

from prunekit.cli.main import main

main()
