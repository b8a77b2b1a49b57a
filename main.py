"""Entry point: ``python main.py {fit,validate,test,predict} --config configs/<task>.yaml``."""

from lact_app.cli import cli_main

if __name__ == "__main__":
    cli_main()
