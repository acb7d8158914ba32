from msrv.cli import main

main()
