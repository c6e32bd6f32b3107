from derain_cli.cli import main

main()
