from spear_mm.cli import main

main()
