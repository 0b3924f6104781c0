"""`python -m treerpo.cli ...`: the same app as the `treerpo` console script."""

from treerpo.cli import run

run()
