from sbs.e2e.cli import main

main()
