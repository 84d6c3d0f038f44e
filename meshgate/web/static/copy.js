// Copy to the clipboard where the page may write it (https, or this machine); elsewhere (plain
// http on another host) the text is selected instead, so Ctrl+C copies it. Used by /chat and /keys.

// `report` shows the outcome ("Copied", or how to copy by hand); `select` makes the text selected.
export async function copyText(text, report, select) {
  try {
    await navigator.clipboard.writeText(text);
    report("Copied");
  } catch {
    select();
    report("Selected: press Ctrl+C");
  }
}

// A fallback for text already on the page: select the node's contents.
export function selectContents(node) {
  const range = document.createRange();
  range.selectNodeContents(node);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}
