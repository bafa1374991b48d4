import typer

fleet_app = typer.Typer(help="Signed model updates for a fleet of devices.", no_args_is_help=True)
