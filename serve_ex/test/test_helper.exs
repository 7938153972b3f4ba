# Tests tagged :rabbitmq use the real broker on 127.0.0.1:5672; `make ex-test` includes them.
ExUnit.start(exclude: [:rabbitmq])
