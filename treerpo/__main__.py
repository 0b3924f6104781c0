"""`python -m treerpo ...`: the same app as the `treerpo` console script."""

from treerpo.cli import run

run()
