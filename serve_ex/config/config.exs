import Config

config :logger, :console,
  format: "$time [$level] $message $metadata\n",
  metadata: [:model, :reason]

import_config "#{config_env()}.exs"
