// The official `openai` Node package against a live meshgate (run by tests/features/test_clients_e2e.py).
// Prints what it saw as one JSON object; the pytest side checks it.
import OpenAI from "openai";

const client = new OpenAI({ apiKey: process.env.MESHGATE_KEY, baseURL: process.env.MESHGATE_BASE_URL, maxRetries: 0 });
const TOOLS = process.env.MODEL_TOOLS;
const REASONER = process.env.MODEL_REASONER;
const weather = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "The weather in a city",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  },
];
const calls = { tool_calls: [{ name: "get_weather", arguments: '{"city": "Paris"}' }] };
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const seen = {};

// 1. a plain stream, with usage
let text = "";
const stream = await client.chat.completions.create({
  model: TOOLS,
  messages: [{ role: "user", content: "hi" }],
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) seen.stream_usage = chunk.usage;
}
seen.streamed = text;

// 2. a tool call, plain
const answer = await client.chat.completions.create({ model: TOOLS, messages: ask, tools: weather, mock: calls });
const call = answer.choices[0].message.tool_calls[0].function;
seen.tool_call = { name: call.name, arguments: JSON.parse(call.arguments) };

// 3. a tool call streamed, assembled by the SDK's helper
const runner = client.chat.completions.stream({ model: TOOLS, messages: ask, tools: weather, mock: calls });
const final = await runner.finalChatCompletion();
const streamedCall = final.choices[0].message.tool_calls[0].function;
seen.streamed_tool_call = { name: streamedCall.name, arguments: JSON.parse(streamedCall.arguments) };

// 4. reasoning under both names, plain and streamed
const mock = { reasoning: "think first", reasoning_field: "reasoning" };
const reasoned = await client.chat.completions.create({ model: REASONER, messages: ask, max_tokens: 40, mock });
seen.reasoning = [reasoned.choices[0].message.reasoning_content, reasoned.choices[0].message.reasoning];
let thought = "";
const reasoningStream = await client.chat.completions.create({
  model: REASONER,
  messages: ask,
  max_tokens: 40,
  stream: true,
  mock,
});
for await (const chunk of reasoningStream) thought += chunk.choices[0]?.delta?.reasoning_content ?? "";
seen.reasoning_streamed = thought;

// 5. a model without tools: an OpenAI error the SDK understands
try {
  await client.chat.completions.create({ model: process.env.MODEL_PLAIN ?? "test/plain", messages: ask, tools: weather });
} catch (error) {
  seen.error = { status: error.status, param: error.param, code: error.code };
}

process.stdout.write(JSON.stringify(seen));
