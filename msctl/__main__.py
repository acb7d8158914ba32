from msctl.cli import main

main()
