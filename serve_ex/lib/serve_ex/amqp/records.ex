defmodule ServeEx.AMQP.Records do
  @moduledoc """
  Elixir macros for the `amqp_client` records the service, its tests and its
  benchmarks use, named `r_` plus the AMQP method (`r_basic_deliver`, `r_p_basic`, ...).
  """
  require Record

  for {name, fields} <- Record.extract_all(from_lib: "amqp_client/include/amqp_client.hrl"),
      name in [
        :"basic.qos",
        :"basic.consume",
        :"basic.consume_ok",
        :"basic.cancel",
        :"basic.cancel_ok",
        :"basic.deliver",
        :"basic.get",
        :"basic.get_ok",
        :"basic.ack",
        :"basic.reject",
        :"basic.nack",
        :"basic.return",
        :"basic.publish",
        :P_basic,
        :amqp_msg,
        :amqp_params_network,
        :"queue.declare",
        :"exchange.declare",
        :"queue.bind",
        :"confirm.select"
      ] do
    Record.defrecord(
      :"r_#{name |> to_string() |> String.replace(".", "_") |> String.downcase()}",
      name,
      fields
    )
  end
end
