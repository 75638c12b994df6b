from nettrim_cli.cli import main

main()
