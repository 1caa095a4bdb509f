export const metadata = {
  title: "Residency Scheduler (rsdeploy stand-in)",
  description: "Reference app standing in for the Residency Scheduler in rsdeploy's tests",
};

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
