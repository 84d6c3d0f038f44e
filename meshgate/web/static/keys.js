// /keys: the copy button of a new key, and a confirmation before revoking.
import { copyText, selectContents } from "/static/copy.js";

for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", () => {
    const source = document.getElementById(button.dataset.copy);
    const status = document.querySelector(`[data-copied-for="${button.dataset.copy}"]`);
    copyText(
      source.textContent.trim(),
      (outcome) => (status.textContent = outcome),
      () => selectContents(source),
    );
  });
}

for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}
