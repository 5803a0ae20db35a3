from dermabench.cli import main

main()
