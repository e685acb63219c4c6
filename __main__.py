from modelrunner.cli.main import main

main()
