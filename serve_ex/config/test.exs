import Config

# Unit tests start the parts they need themselves, with a fake AMQP client.
config :serve_ex, start_service: false
config :logger, level: :warning
