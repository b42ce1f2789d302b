"""`python -m sidecar.launcher`: what `make run` starts (sidecar.launcher.run)."""

from sidecar.launcher.run import main

main()
