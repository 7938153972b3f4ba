defmodule ServeEx.ReplyTo do
  @moduledoc """
  Which `reply_to` names the service publishes to. Anyone who can publish a request
  picks its `reply_to`, so an unchecked name lets a client aim the service's replies
  at any queue, and a malformed direct reply-to name makes the broker close the
  publishing connection. Accepted, and nothing else:

  - a broker-generated queue name: `amq.gen-` and 22 characters of URL-safe base64;
  - a name under the configured prefix (`REPLY_QUEUE_PREFIX`), followed by 1 to 100
    letters, digits or `_.:-`;
  - a direct reply-to name in the broker's own form:
    `amq.rabbitmq.reply-to.<base64 of an encoded pid>.<base64 of 16 bytes>`, where the
    pid part decodes to an Erlang external-format pid on a node named
    `reply@<digits>` (checked byte by byte: no atom is ever created from it).

      iex> ServeEx.ReplyTo.accepted?("amq.gen--BqgpWru21hmTnxFXXGUGA", "serve_ex.reply.")
      true
      iex> ServeEx.ReplyTo.accepted?("amq.gen-short", "serve_ex.reply.")
      false
      iex> ServeEx.ReplyTo.accepted?("serve_ex.reply.client-7", "serve_ex.reply.")
      true
      iex> ServeEx.ReplyTo.accepted?("amq.rabbitmq.reply-to.AAAA.BBBB", "serve_ex.reply.")
      false
      iex> ServeEx.ReplyTo.accepted?("serve_ex.requests", "serve_ex.reply.")
      false
  """

  @direct "amq.rabbitmq.reply-to."
  # External term format: 131, then NEW_PID_EXT (88) or PID_EXT (103), whose node is an
  # ATOM_UTF8_EXT (118) or ATOM_EXT (100) atom.
  @version 131
  @new_pid 88
  @pid 103
  @atom_tags [118, 100]

  @spec accepted?(String.t() | nil, String.t()) :: boolean()
  def accepted?(name, prefix) when is_binary(name) do
    byte_size(name) <= 255 and
      (Regex.match?(~r/\Aamq\.gen-[A-Za-z0-9_-]{22}\z/, name) or
         under_prefix?(name, prefix) or direct_reply_to?(name))
  end

  def accepted?(_name, _prefix), do: false

  defp under_prefix?(name, prefix) do
    case name do
      <<^prefix::binary-size(byte_size(prefix)), rest::binary>> when prefix != "" ->
        Regex.match?(~r/\A[A-Za-z0-9_.:-]{1,100}\z/, rest)

      _ ->
        false
    end
  end

  defp direct_reply_to?(@direct <> rest) do
    with [pid64, key64] <- String.split(rest, "."),
         {:ok, pid} <- Base.decode64(pid64),
         {:ok, key} <- Base.decode64(key64) do
      byte_size(key) == 16 and encoded_pid?(pid)
    else
      _ -> false
    end
  end

  defp direct_reply_to?(_name), do: false

  defp encoded_pid?(<<@version, @new_pid, tag, len::16, node::binary-size(len), _::96>>)
       when tag in @atom_tags,
       do: reply_node?(node)

  defp encoded_pid?(<<@version, @pid, tag, len::16, node::binary-size(len), _::72>>)
       when tag in @atom_tags,
       do: reply_node?(node)

  defp encoded_pid?(_), do: false

  defp reply_node?(node), do: Regex.match?(~r/\Areply@[0-9]{1,20}\z/, node)
end
