"""The typer application object shared by the command modules."""

import typer

app = typer.Typer(
    name="attattr",
    help=(
        "Self-attention attribution for Hugging Face Transformers.\n\n"
        'Example:  attattr explain "a gorgeous, witty and deeply moving film" --out out/'
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
