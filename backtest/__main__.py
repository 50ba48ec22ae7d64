from backtest.launch import main

main()
