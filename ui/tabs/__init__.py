"""One module per tab, each exposing `build(ctx: AppContext) -> None`, in the order the tabs appear."""
