defmodule ServeEx.ConnectionTest do
  @moduledoc "A dead broker: the manager keeps retrying with backoff, and reconnects after a loss."
  use ExUnit.Case, async: false
  @moduletag :capture_log

  alias ServeEx.Connection

  setup do
    Application.put_env(:serve_ex, :amqp, ServeEx.AMQP.Fake)
    Application.put_env(:serve_ex, :fake_amqp_owner, self())

    on_exit(fn ->
      Application.delete_env(:serve_ex, :amqp)
      Application.delete_env(:serve_ex, :fake_connect_failures)
    end)
  end

  test "retries while the broker refuses, then connects" do
    Application.put_env(:serve_ex, :fake_connect_failures, 3)
    start_supervised!({Connection, url: "amqp://guest:guest@127.0.0.1:1", queue: "q"})
    refute Connection.connected?()
    assert {:error, :not_connected} = Connection.open_channel()
    # backoff 100, 200, 400 ms, each jittered to 50-150 %
    assert_receive {:connected, _conn}, 3_000
    assert Connection.connected?()
    assert {:ok, _chan} = Connection.open_channel()
  end

  test "reconnects when the connection dies" do
    start_supervised!({Connection, url: "amqp://guest:guest@127.0.0.1:1", queue: "q"})
    assert_receive {:connected, conn}, 1_000
    Process.exit(conn, :kill)
    assert_receive {:connected, new_conn}, 2_000
    assert new_conn != conn
    assert Connection.connected?()
  end
end
