"""The pipeline steps, each `run(ctx, inputs, output) -> Manifest`, declared once in `graph` and run by
`base.run_step`."""
