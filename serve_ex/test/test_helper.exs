# Tests tagged :rabbitmq use the real broker on 127.0.0.1:5672; `make ex-test` includes them.
ServeEx.AMQP.Fake.create_table()
ExUnit.start(exclude: [:rabbitmq])
