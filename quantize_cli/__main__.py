from quantize_cli.cli import main

main()
