from nettrim_cli.cli import run

run()
