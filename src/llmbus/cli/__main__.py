from llmbus.cli import main

main()
