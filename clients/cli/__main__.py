"""`python -m clients.cli`: the `easel` command without the installed script."""

from clients.cli.app import main

main()
