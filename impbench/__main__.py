from impbench.cli import main

main()
